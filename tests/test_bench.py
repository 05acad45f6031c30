"""`llmos bench --repeat N`: each benchmark runs N times (baseline and candidate side by side in every
run, so the two interleave); the median ratio decides `met`, and the spread is reported beside it."""

from __future__ import annotations

import itertools

import pytest

from llmos.benchmarks import BenchResult, run_benchmarks
from llmos.benchmarks.registry import REGISTRY
from llmos.kernel.errors import InvalidRequestError


@pytest.fixture
def noisy_benchmark():
    """A registered benchmark whose ratio is 0.5, then 2.0, then 1.2 (a bad day, a lucky one, the truth)."""
    candidates = itertools.cycle([5.0, 20.0, 12.0])
    order: list[str] = []

    def noisy(ctx):
        order.append("run")
        return [BenchResult("TX speed", 10.0, next(candidates), "tok/s", 1.1),
                BenchResult("TX latency", 2.0, 1.0, "ms", 1.5, higher_is_better=False)]

    REGISTRY["TX"] = (noisy, "a test benchmark")
    yield order
    del REGISTRY["TX"]


def test_repeat_reports_the_median_ratio_with_its_spread_and_met_uses_the_median(noisy_benchmark):
    speed, latency = run_benchmarks(["TX"], repeat=3)
    assert len(noisy_benchmark) == 3  # the whole benchmark ran three times, both arms each time
    assert (speed.name, speed.ratios) == ("TX speed", [0.5, 1.2, 2.0])
    assert speed.ratio == 1.2 and speed.met  # the median meets 1.1; the first run alone would not
    assert speed.baseline == 10.0 and speed.candidate == 12.0
    row = speed.as_dict()
    assert (row["ratio"], row["ratio_min"], row["ratio_max"], row["met"]) == (1.2, 0.5, 2.0, True)
    assert [r["ratio"] for r in row["runs"]] == [0.5, 2.0, 1.2]  # in the order they ran
    assert latency.ratio == 2.0 and latency.met  # lower is better: 2 ms -> 1 ms


def test_a_median_below_target_is_not_met_even_after_a_lucky_run(noisy_benchmark):
    [speed, _] = run_benchmarks(["TX"], repeat=2)  # 0.5 and 2.0: median 1.25
    assert speed.met
    REGISTRY["TX"] = (lambda ctx: BenchResult("TX speed", 10.0, 5.0, "tok/s", 1.1), "always slow")
    [slow] = run_benchmarks(["TX"], repeat=3)
    assert slow.ratio == 0.5 and not slow.met


def test_repeat_out_of_range_is_a_typed_error(noisy_benchmark):
    with pytest.raises(InvalidRequestError, match="repeat must be between 1 and 100"):
        run_benchmarks(["TX"], repeat=0)
