"""memfs ingest benchmark (memfs issue): B6, torch per chunk vs the default ("auto") backend batched, and
B6o, vs ONNX Runtime alone where auto differs from it (search: search_bench.py)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from .registry import BenchContext, BenchResult, benchmark


def _chunks(n: int, chunk: Callable[[str], list]) -> list[str]:
    """`n` distinct real text chunks, each exactly one embedder chunk: the first chunk (`chunk`: the
    embedder's chunker, 128-token windows) of 90-word windows of CPython's pydoc topics starting every
    `stride` words. Until stop 39 the whole 90-word windows were stored: ~176 tokens, so 1,649 of the
    2,000 "one-chunk" files were cut into two or more chunks (4,064 in all); before stop 38 the windows
    did not overlap and ran out after 728, leaving 1,272 files empty."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    stride = (len(words) - 90) // n
    if stride < 1:
        raise ValueError(f"pydoc topics hold {len(words)} words: too few for {n} chunks")
    texts = [chunk(" ".join(words[i * stride:i * stride + 90]))[0].text for i in range(n)]
    if len(set(texts)) != n or any(len(chunk(t)) != 1 for t in texts):
        raise AssertionError("B6's chunks must be distinct and one embedder chunk each")
    return texts


@benchmark("B6", "ingest of 2,000 one-chunk files: torch embedder per chunk (write) vs the default backend batched (import)")
def b6(ctx: BenchContext) -> list[BenchResult]:
    """Volumes fed the same 2,000 files: the torch backend one write (one chunk, one transaction) at a
    time, and `import_dir` (batched embedding, one transaction per 64 files) on the default "auto"
    backend (B6) and, where that differs (a CPU with bf16 instructions: auto embeds bulk ingest on bf16),
    on ONNX Runtime alone (B6o). Arms run in turn in this thread, each after a warm-up write (the ONNX
    export happens there, once) and, for auto, its bulk backend loaded, as the baseline's model is; the
    baseline runs first, before the bf16 model is traced (measured: a torch fp32 run after a bf16 one
    was ~14% slower, which would flatter the ratios)."""
    from llmos.drivers.embedder_select import bulk_bf16_available, make_embedder
    from llmos.drivers.memfs_index import VectorIndex
    from llmos.kernel.config import default_home
    from llmos.kernel.memfs import MemFS

    cache = (Path(ctx.home) if ctx.home else default_home()) / "cache" / "embedder"
    fast_backends = ["auto"] + (["onnx"] if bulk_bf16_available() else [])
    embedders = {name: make_embedder(name, cache_dir=cache) for name in ["torch", *fast_backends]}
    texts = _chunks(2000, embedders["torch"].chunk)
    with tempfile.TemporaryDirectory() as tmp:
        volumes = {name: MemFS(Path(tmp) / name, lambda e=e: (e, VectorIndex)) for name, e in embedders.items()}
        for fs in volumes.values():
            fs.write("/warm.md", "warm up (and export the ONNX model once)")
        src = Path(tmp) / "src"
        src.mkdir()
        for i, t in enumerate(texts):
            (src / f"c{i:04d}.txt").write_text(t)
        ctx.log("B6: writing the same files one by one, torch backend (each chunk embedded alone)")
        started = time.perf_counter()
        for i, t in enumerate(texts):
            volumes["torch"].write(f"/in/c{i:04d}.txt", t)
        baseline = len(texts) / (time.perf_counter() - started)
        rates = {}
        for name in fast_backends:
            if hasattr(embedders[name], "start_bulk"):
                ctx.log(f"B6: {name}: loading its bulk backend: {embedders[name].start_bulk(wait=True)}")
            ctx.log(f"B6: importing 2,000 one-chunk files, {name} backend ({embedders[name].backend}), batched")
            started = time.perf_counter()
            volumes[name].import_dir(src, "/in")
            rates[name] = len(texts) / (time.perf_counter() - started)
        assert len({fs.stat("/in")["files"] for fs in volumes.values()}) == 1
        for fs in volumes.values():
            fs.close()
    label = {"auto": "B6", "onnx": "B6o"}
    return [BenchResult(label[name], baseline, rates[name], "files/s", 2.5,
                        description=f"one chunk per file, whole ingest (SQLite and FAISS included): torch per chunk "
                                    f"vs {name} ({embedders[name].backend}) batched") for name in fast_backends]
