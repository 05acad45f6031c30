"""Benchmarks run by `llmos bench`: each measures a baseline and a candidate side by side in one run
and reports their ratio against a target. Never part of the test suite (no timing assertions there).

A benchmark is a function `(ctx: BenchContext) -> BenchResult` (or a list of them) registered with
`@benchmark(NAME)`.
"""

from __future__ import annotations

import time

from llmos.kernel.errors import InvalidRequestError

from .registry import REGISTRY as _REGISTRY
from .registry import BenchContext, BenchResult, benchmark

__all__ = ["BenchContext", "BenchResult", "available", "benchmark", "run_benchmarks"]


def available() -> dict[str, str]:
    _load_all()
    return {name: desc for name, (_fn, desc) in sorted(_REGISTRY.items())}


def _load_all() -> None:
    from . import (agents_bench, daemon_bench, llamacpp_bench, memfs_bench, shell_bench, tenants_bench,  # noqa: F401
                   torch_bench)  # each registers
    # its own


def run_benchmarks(names: list[str] | None = None, *, home: str | None = None, progress=None) -> list[BenchResult]:
    _load_all()
    chosen = names or sorted(_REGISTRY)
    unknown = [n for n in chosen if n not in _REGISTRY]
    if unknown:
        raise InvalidRequestError(f"unknown benchmark(s) {unknown}: choose from {sorted(_REGISTRY)}", param="names")

    def log(msg: str) -> None:
        if progress is not None:
            progress.print(f"[dim]{msg}[/]")

    results = []
    for name in chosen:
        fn, desc = _REGISTRY[name]
        log(f"{name}: {desc}")
        started = time.monotonic()
        result = fn(BenchContext(home=home, log=log))  # one result, or a list (B8 reports two)
        results.extend(result if isinstance(result, list) else [result])
        log(f"{name}: done in {time.monotonic() - started:.1f}s")
    return results
