"""Benchmarks run by `llmos bench`: each measures a baseline and a candidate side by side in one run
and reports their ratio against a target. Never part of the test suite (no timing assertions there).

A benchmark is a function `(ctx: BenchContext) -> BenchResult` (or a list of them) registered with
`@benchmark(NAME)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from llmos.kernel.errors import InvalidRequestError


@dataclass(frozen=True)
class BenchResult:
    name: str
    baseline: float
    candidate: float
    unit: str
    target: float
    higher_is_better: bool = True
    description: str = ""

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.candidate / self.baseline if self.baseline else float("inf")
        return self.baseline / self.candidate if self.candidate else float("inf")

    @property
    def met(self) -> bool:
        return self.ratio >= self.target

    def as_dict(self) -> dict:
        return {"name": self.name, "baseline": self.baseline, "candidate": self.candidate,
                "unit": self.unit, "ratio": round(self.ratio, 3), "target": self.target,
                "description": self.description}


@dataclass
class BenchContext:
    home: str | None
    log: Callable[[str], None]


_REGISTRY: dict[str, tuple[Callable[[BenchContext], BenchResult], str]] = {}


def benchmark(name: str, description: str) -> Callable:
    def wrap(fn: Callable[[BenchContext], BenchResult]) -> Callable[[BenchContext], BenchResult]:
        _REGISTRY[name] = (fn, description)
        return fn
    return wrap


def available() -> dict[str, str]:
    _load_all()
    return {name: desc for name, (_fn, desc) in sorted(_REGISTRY.items())}


def _load_all() -> None:
    from . import agents_bench, llamacpp_bench, memfs_bench, shell_bench, torch_bench  # noqa: F401 - each registers its own


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
