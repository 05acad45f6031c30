"""memfs ingest benchmark (memfs issue): B6, torch per chunk vs ONNX batched (search: search_bench.py)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .registry import BenchContext, BenchResult, benchmark


def _chunks(n: int) -> list[str]:
    """`n` real text chunks: 90-word runs of CPython's pydoc topics (one embedder window each)."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    return [" ".join(words[i * 90:(i + 1) * 90]) for i in range(n)]


@benchmark("B6", "ingest of 2,000 one-chunk files: torch embedder per chunk (write) vs ONNX embedder batched (import)")
def b6(ctx: BenchContext) -> BenchResult:
    from llmos.drivers.embedder_select import make_embedder
    from llmos.drivers.memfs_index import VectorIndex
    from llmos.kernel.config import default_home
    from llmos.kernel.memfs import MemFS

    cache = (Path(ctx.home) if ctx.home else default_home()) / "cache" / "embedder"
    texts = _chunks(2000)
    with tempfile.TemporaryDirectory() as tmp:
        # both in this thread: torch with its default threads (the cores), onnxruntime with the cores
        fast = MemFS(Path(tmp) / "a", lambda: (make_embedder("onnx", cache_dir=cache), VectorIndex))
        torch = MemFS(Path(tmp) / "b", lambda: (make_embedder("torch"), VectorIndex))
        fast.write("/warm.md", "warm up (and export the ONNX model once)")
        torch.write("/warm.md", "warm up")
        src = Path(tmp) / "src"
        src.mkdir()
        for i, t in enumerate(texts):
            (src / f"c{i:04d}.txt").write_text(t)
        ctx.log("B6: importing 2,000 one-chunk files, ONNX backend, batched")
        started = time.perf_counter()
        fast.import_dir(src, "/in")
        candidate = len(texts) / (time.perf_counter() - started)
        ctx.log("B6: writing the same files one by one, torch backend (each chunk embedded alone)")
        started = time.perf_counter()
        for i, t in enumerate(texts):
            torch.write(f"/in/c{i:04d}.txt", t)
        baseline = len(texts) / (time.perf_counter() - started)
        assert fast.stat("/in")["files"] == torch.stat("/in")["files"] == len(texts)
        fast.close()
        torch.close()
    return BenchResult("B6", baseline, candidate, "files/s", 2.5,
                       description="one chunk per file, whole ingest (SQLite and FAISS included)")
