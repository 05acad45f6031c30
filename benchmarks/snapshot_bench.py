"""memfs snapshot benchmark (memfs issue): B15, a copy-on-write snapshot vs a full copy of the volume."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from .registry import BenchContext, BenchResult, benchmark
from .synthetic import synthetic_embeddings, volume_of


BUDGET_S = 1.0  # the bar for a snapshot of 1e5 passages


@benchmark("B15", "snapshot of a 1e5-passage volume: the copy-on-write snapshot vs the 1 s budget (a full copy, SQLite "
                  "backup + index file, timed beside it); rollback then answers searches identically")
def b15(ctx: BenchContext) -> list[BenchResult]:
    from llmos.kernel.memfs.volume import FileWrite, StoredChunk

    n = 100_000
    vectors = synthetic_embeddings(np.random.default_rng(0), n)
    queries = synthetic_embeddings(np.random.default_rng(1), 50)
    with tempfile.TemporaryDirectory() as tmp:
        ctx.log(f"B15: writing {n:,} one-passage files")
        vol = volume_of(vectors, Path(tmp) / "root", ctx.log)
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
        after = [vol.find("", vector=q, k=10) for q in queries]
        identical = sum(a == b for a, b in zip(after, before)) / len(queries)
        ctx.log(f"B15: snapshot {candidate:.3f} s (target < 1 s), full copy {baseline:.3f} s, "
                f"rollback identical searches: {identical:.0%}")
        vol.close()
    return [BenchResult("B15", BUDGET_S, candidate, "s", 1.0, higher_is_better=False,
                        description=f"snapshot {candidate:.2f} s vs the {BUDGET_S:.0f} s budget (a full copy of the "
                                    f"volume: {baseline:.2f} s)"),
            BenchResult("B15 searches answered identically after the rollback", 1.0, identical, "fraction", 1.0,
                        description=f"{len(queries)} queries, top 10 each")]
