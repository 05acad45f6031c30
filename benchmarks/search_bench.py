"""memfs search benchmarks (memfs issue): B5 (1e5 passages) and B5m (1e6), a real volume's search end to
end (its lock, the index, the SQLite lookup of the hits' paths) vs numpy brute force over the same vectors,
with recall@10 against the exact answer counted as a result of its own."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .registry import BenchContext, BenchResult, benchmark
from .synthetic import passage_number, synthetic_embeddings, volume_of

K = 10
WARM = 500  # queries run before the timed ones (a serving index is warm: its upper layers cached)
SLICE = 100


def _proc_mib(path: str, field: str) -> float:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return float("nan")


def _rss_mib() -> float:
    return _proc_mib("/proc/self/status", "VmRSS")


def _memory() -> str:
    """The process's RSS, split into its own memory and mapped files (the volume's database is read
    through a mapping: its pages are page cache, counted in RssFile)."""
    return (f"process RSS {_rss_mib():.0f} MiB: {_proc_mib('/proc/self/status', 'RssAnon'):.0f} MiB its own, "
            f"{_proc_mib('/proc/self/status', 'RssFile'):.0f} MiB mapped files")


def _exact_top(vectors: np.ndarray, q: np.ndarray) -> list[int]:
    scores = vectors @ q
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])].tolist()


def _search_bench(ctx: BenchContext, name: str, n: int, target: float, queries: int) -> list[BenchResult]:
    import faiss

    vectors = synthetic_embeddings(np.random.default_rng(0), n)
    qs = synthetic_embeddings(np.random.default_rng(1), queries)
    with tempfile.TemporaryDirectory() as tmp:
        ctx.log(f"{name}: writing {n:,} one-passage files into a volume (the index is rebuilt as it grows)")
        rss0, started = _rss_mib(), time.perf_counter()
        vol = volume_of(vectors, Path(tmp) / "root", ctx.log)
        built_s = time.perf_counter() - started
        index_mib = len(faiss.serialize_index(vol.index._index)) / 2**20
        vol.index.settle()  # a grown index's arrays are moved back onto huge pages in the background
        ctx.log(f"{name}: volume ready in {built_s:.0f} s, index {vol.index.kind} {index_mib:.0f} MiB "
                f"({_proc_mib('/proc/self/smaps_rollup', 'AnonHugePages'):.0f} MiB of the process on huge pages), "
                f"{_memory()} (RSS was {rss0:.0f} MiB before the volume)")
        started = time.perf_counter()
        exact = [_exact_top(vectors, q) for q in qs]
        baseline = (time.perf_counter() - started) / queries * 1e3
        for q in synthetic_embeddings(np.random.default_rng(2), WARM):  # other queries: the index's pages resident
            vol.find("", vector=q, k=K)
        found, slices = [], []
        for part in range(0, queries, SLICE):  # timed in slices: the log shows a slow spell, if any
            started = time.perf_counter()
            found += [[passage_number(h["path"]) for h in vol.find("", vector=q, k=K)] for q in qs[part:part + SLICE]]
            slices.append(time.perf_counter() - started)
        candidate = sum(slices) / queries * 1e3
        ctx.log(f"{name}: ms a query by slices of {SLICE}: " + ", ".join(f"{t / SLICE * 1e3:.3f}" for t in slices))
        started = time.perf_counter()
        for q in qs:  # where the time went: the same queries again, the index alone
            vol.index.search(q, K)
        ctx.log(f"{name}: the index alone, the same queries after them: "
                f"{(time.perf_counter() - started) / queries * 1e3:.3f} ms a query; {_memory()}")
        vol.close()
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact)]))
    ctx.log(f"{name}: recall@10 {recall:.3f} (target >= 0.95); {baseline:.2f} ms brute force, {candidate:.3f} ms volume")
    return [BenchResult(name, baseline, candidate, "ms/query", target, higher_is_better=False,
                        description=f"{n:,} passages: volume.find end to end vs numpy brute force; "
                                    f"index {index_mib:.0f} MiB"),
            BenchResult(f"{name} recall@10 vs the exact top 10", 1.0, recall, "recall", 0.95,
                        description=f"{queries} queries")]


@benchmark("B5", "search over 1e5 synthetic 384-d passages: a volume's search end to end vs numpy brute force, "
                 "and its recall@10")
def b5(ctx: BenchContext) -> list[BenchResult]:
    return _search_bench(ctx, "B5", 100_000, 20.0, queries=500)


@benchmark("B5m", "search over 1e6 synthetic 384-d passages: a volume's search end to end vs numpy brute force, "
                  "its recall@10, the index's size and the process RSS (a long run: the volume is built first)")
def b5m(ctx: BenchContext) -> list[BenchResult]:
    return _search_bench(ctx, "B5m", 1_000_000, 100.0, queries=500)
