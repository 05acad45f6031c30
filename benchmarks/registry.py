"""What a benchmark is and where it registers: `BenchResult`, `BenchContext` and `@benchmark(NAME)`.

The benchmark modules import this, never the package (whose `run_benchmarks` imports them).
"""

from __future__ import annotations

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
