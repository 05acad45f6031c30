"""memfs benchmarks (memfs issue): B5 (vector search), B6 (ingest: torch per chunk vs ONNX batched)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .registry import BenchContext, BenchResult, benchmark


def synthetic_embeddings(rng, n: int, dim: int = 384, latent: int = 24) -> np.ndarray:
    """Random unit vectors with the low intrinsic dimension of real sentence embeddings (a random
    linear map of a 24-d Gaussian plus noise). Uniform random 384-d vectors have no neighbourhoods
    at all: on them no approximate index beats brute force at high recall."""
    basis = np.random.default_rng(1).normal(size=(latent, dim)).astype(np.float32)
    v = rng.normal(size=(n, latent)).astype(np.float32) @ basis + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@benchmark("B5", "search over 1e5 synthetic unit vectors (dim 384): the volume's index vs numpy brute force")
def b5(ctx: BenchContext) -> BenchResult:
    from llmos.drivers.memfs_index import HNSW_THRESHOLD, VectorIndex

    dim, n, queries, k = 384, 100_000, 200, 10
    rng = np.random.default_rng(0)
    vecs, qs = synthetic_embeddings(rng, n, dim), synthetic_embeddings(rng, queries, dim)
    small = VectorIndex.build(dim, np.arange(10_000), vecs[:10_000])
    assert small.kind == "flat" and 10_000 <= HNSW_THRESHOLD, "at 1e4 a volume keeps the exact index"
    ctx.log("B5: building the HNSW index over 1e5 vectors")
    index = VectorIndex.build(dim, np.arange(n), vecs)
    assert index.kind == "hnsw"
    started = time.perf_counter()
    exact = []
    for q in qs:
        scores = vecs @ q
        top = np.argpartition(-scores, k)[:k]
        exact.append(set(top[np.argsort(-scores[top])].tolist()))
    baseline = (time.perf_counter() - started) / queries * 1e3
    started = time.perf_counter()
    found = [set(i for i, _s in index.search(q, k)) for q in qs]
    candidate = (time.perf_counter() - started) / queries * 1e3
    recall = float(np.mean([len(a & b) / k for a, b in zip(found, exact)]))
    ctx.log(f"B5: recall@10 = {recall:.3f} (target >= 0.95)")
    return BenchResult("B5", baseline, candidate, "ms/query", 20.0, higher_is_better=False,
                       description=f"HNSW vs numpy brute force, recall@10 {recall:.3f}")


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
