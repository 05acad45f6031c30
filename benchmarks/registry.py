"""What a benchmark is and where it registers: `BenchResult`, `BenchContext` and `@benchmark(NAME)`.

The benchmark modules import this, never the package (whose `run_benchmarks` imports them).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable


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


@dataclass(frozen=True)
class BenchSummary:
    """One result over repeated runs: each run measured its baseline and candidate side by side, so the
    runs interleave the two; the figures are medians and `met` holds for the median ratio."""

    runs: tuple[BenchResult, ...]

    @property
    def first(self) -> BenchResult:
        return self.runs[0]

    @property
    def name(self) -> str:
        return self.first.name

    @property
    def ratios(self) -> list[float]:
        return sorted(r.ratio for r in self.runs)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def baseline(self) -> float:
        return statistics.median(r.baseline for r in self.runs)

    @property
    def candidate(self) -> float:
        return statistics.median(r.candidate for r in self.runs)

    @property
    def met(self) -> bool:
        return self.ratio >= self.first.target

    def as_dict(self) -> dict:
        row = self.first.as_dict()
        row.update(baseline=self.baseline, candidate=self.candidate, ratio=round(self.ratio, 3),
                   ratio_min=round(self.ratios[0], 3), ratio_max=round(self.ratios[-1], 3), met=self.met,
                   runs=[{k: r.as_dict()[k] for k in ("baseline", "candidate", "ratio")} for r in self.runs])
        return row


@dataclass
class BenchContext:
    home: str | None
    log: Callable[[str], None]


REGISTRY: dict[str, tuple[Callable[[BenchContext], BenchResult], str]] = {}


def benchmark(name: str, description: str) -> Callable:
    def wrap(fn: Callable[[BenchContext], BenchResult]) -> Callable[[BenchContext], BenchResult]:
        REGISTRY[name] = (fn, description)
        return fn
    return wrap
