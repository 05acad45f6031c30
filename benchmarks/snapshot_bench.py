"""memfs snapshot benchmark (memfs issue): B15, a copy-on-write snapshot vs a full copy of the volume."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from .memfs_bench import synthetic_embeddings
from .registry import BenchContext, BenchResult, benchmark


class _Fixed:
    """The volume's embedder for synthetic passages: the benchmark stores precomputed vectors, and embeds
    a query only as its own synthetic vector (no model needed to time snapshots)."""
    dim = 384

    def chunk(self, text):  # pragma: no cover - every write here passes its chunks
        raise AssertionError("B15 writes precomputed chunks")

    def embed(self, texts, **_hints):
        return synthetic_embeddings(np.random.default_rng(len(texts)), len(texts), self.dim)


@benchmark("B15", "snapshot of a 1e5-passage volume: copy-on-write snapshot vs a full copy (SQLite backup "
                  "+ index file); rollback then answers searches identically")
def b15(ctx: BenchContext) -> BenchResult:
    from llmos.drivers.memfs_index import VectorIndex
    from llmos.kernel.memfs.volume import FileWrite, StoredChunk, Volume

    n, batch = 100_000, 5_000
    vectors = synthetic_embeddings(np.random.default_rng(0), n)
    queries = synthetic_embeddings(np.random.default_rng(1), 50)
    with tempfile.TemporaryDirectory() as tmp:
        vol = Volume("root", Path(tmp) / "root", _Fixed(), VectorIndex)
        ctx.log(f"B15: writing {n} one-passage files in batches of {batch}")
        for start in range(0, n, batch):
            vol.write_many([FileWrite(f"/p/{i // 1000}/{i}.txt", f"passage {i}",
                                      embedded=([StoredChunk(0, 10, f"passage {i}")], vectors[i:i + 1]))
                            for i in range(start, min(n, start + batch))])
        if vol.rebuild_thread is not None:
            ctx.log("B15: waiting for the HNSW index build")
            vol.rebuild_thread.join()
        before = [vol.find("", vector=q, k=10) for q in queries]
        started = time.perf_counter()
        vol.snapshot("b15")
        candidate = time.perf_counter() - started
        started = time.perf_counter()  # the baseline: what a copy of the volume costs
        copy = sqlite3.connect(Path(tmp) / "copy.sqlite")
        vol.db.backup(copy)
        copy.close()
        vol.index.save(Path(tmp) / "copy.faiss")
        baseline = time.perf_counter() - started
        vol.write_many([FileWrite(f"/new/{i}.txt", f"new {i}", embedded=([StoredChunk(0, 5, f"new {i}")],
                                                                          vectors[i:i + 1])) for i in range(2000)])
        vol.rm("/p/1", recursive=True)
        vol.rollback("b15")
        identical = [vol.find("", vector=q, k=10) for q in queries] == before
        ctx.log(f"B15: snapshot {candidate:.3f} s (target < 1 s), full copy {baseline:.3f} s, "
                f"rollback identical: {identical}")
        vol.close()
    return BenchResult("B15", baseline, candidate, "s", 1.0, higher_is_better=False,
                       description=f"snapshot {candidate:.2f} s (< 1 s: {candidate < 1.0}), rollback identical "
                                   f"searches: {identical}")
