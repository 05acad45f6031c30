"""Benchmarks run by `llmos bench`: each measures a baseline and a candidate side by side in one run
and reports their ratio against a target. Never part of the test suite (no timing assertions there).

A benchmark is a function `(ctx: BenchContext) -> BenchResult` (or a list of them) registered with
`@benchmark(NAME)`. `run_benchmarks(repeat=N)` runs each one N times in a row (every run measures its
baseline and candidate side by side, so the two interleave) and summarizes each result by its median
ratio, with the min-max spread (`BenchSummary`).
"""

from __future__ import annotations

import time

from llmos.kernel.errors import InvalidRequestError

from .registry import REGISTRY as _REGISTRY
from .registry import BenchContext, BenchResult, BenchSummary, benchmark

__all__ = ["BenchContext", "BenchResult", "BenchSummary", "available", "benchmark", "run_benchmarks"]


def available() -> dict[str, str]:
    _load_all()
    return {name: desc for name, (_fn, desc) in sorted(_REGISTRY.items())}


def _load_all() -> None:
    from . import (agents_bench, constrain_bench, daemon_bench, deploy_bench, llamacpp_bench,  # noqa: F401
                   memfs_bench, search_bench, session_bench, snapshot_bench, shell_bench, swap_bench,
                   tenants_bench, torch_bench)  # each registers its own


def run_benchmarks(names: list[str] | None = None, *, home: str | None = None, progress=None,
                   repeat: int = 1) -> list[BenchSummary]:
    _load_all()
    chosen = names or sorted(_REGISTRY)
    unknown = [n for n in chosen if n not in _REGISTRY]
    if unknown:
        raise InvalidRequestError(f"unknown benchmark(s) {unknown}: choose from {sorted(_REGISTRY)}", param="names")
    if not 1 <= repeat <= 100:
        raise InvalidRequestError(f"repeat must be between 1 and 100, not {repeat}", param="repeat")

    def log(msg: str) -> None:
        if progress is not None:
            progress.print(f"[dim]{msg}[/]")

    summaries = []
    for name in chosen:
        fn, desc = _REGISTRY[name]
        log(f"{name}: {desc}")
        runs: dict[str, list[BenchResult]] = {}  # result name -> its runs (B8 reports two results)
        for i in range(repeat):
            started = time.monotonic()
            result = fn(BenchContext(home=home, log=log))
            for r in result if isinstance(result, list) else [result]:
                runs.setdefault(r.name, []).append(r)
                log(f"{name}: run {i + 1}/{repeat}: {r.name} {r.ratio:.2f}x")
            log(f"{name}: run {i + 1}/{repeat} done in {time.monotonic() - started:.1f}s")
        summaries.extend(BenchSummary(tuple(rs)) for rs in runs.values())
    return summaries
