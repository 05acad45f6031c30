"""KV swap benchmark (the KV-swap issue), side by side in one run on the default llama.cpp model:

B12: a batch request with a ~2,000-token context is preempted by an urgent request whose prompt needs
its KV cells; when the urgent one ends, the time until the batch request's next token: with the KV
swap (its state restored from RAM) vs without (its whole context recomputed). Same kernel settings,
threads and prompts in both arms; median of REPEATS preemptions each.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

from .registry import BenchContext, BenchResult, benchmark

REPEATS = 3
CONTEXT = "The harbour log records ships, tides, cargo and weather for every day of the season. " * 110
URGENT = "Read this list of ports and cargo before you answer the question at the end. " * 40 + "Name one."


def _resume_gaps(swap_mb: int, log) -> tuple[list[float], dict]:
    import llmos
    from llmos.kernel.tenants.tenant import Tenant

    home = tempfile.mkdtemp(prefix="llmos-bench-swap-")
    gaps = []
    try:
        with llmos.boot(home=home, load_entrypoints=False, max_running=1, n_ctx=2560, kv_swap_mb=swap_mb) as kernel:
            driver = kernel.load().driver
            log(f"B12: context of {len(driver.tokenize(CONTEXT))} tokens, urgent prompt of "
                f"{len(driver.tokenize(URGENT))}")
            for i in range(REPEATS):
                victim = kernel.submit(f"Day {i}. " + CONTEXT, tenant=Tenant("nightly", "batch"), max_tokens=16,
                                       temperature=0, ignore_eos=True)
                while len(victim.request.output_token_ids) < 4:
                    time.sleep(0.001)
                urgent = kernel.submit(f"Question {i}. " + URGENT, tenant=Tenant("desk", "interactive"), max_tokens=1,
                                       temperature=0)
                urgent.result(300)
                ended, seen = time.perf_counter(), len(victim.request.output_token_ids)
                while len(victim.request.output_token_ids) == seen and not victim.done:
                    time.sleep(0.0005)
                gaps.append(time.perf_counter() - ended)
                victim.result(300)
                assert victim.request.metrics.preemptions == 1, "the urgent request did not preempt the batch one"
            return gaps, driver.stats()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@benchmark("B12", "a preempted 2,000-token request resumes: time to its next token, swap-in vs recompute")
def b12(ctx: BenchContext) -> BenchResult:
    recompute, off = _resume_gaps(0, ctx.log)
    swapped, on = _resume_gaps(1024, ctx.log)
    ctx.log(f"B12: recompute {[round(g * 1000) for g in recompute]} ms, swap-in {[round(g * 1000) for g in swapped]} "
            f"ms; swapped in {on['swapped_in']}x ({on['swap_ram_bytes'] / 2**20:.0f} MiB still in RAM)")
    return BenchResult("B12 time to the next token after a preemption, recompute vs swap-in",
                       statistics.median(recompute) * 1000, statistics.median(swapped) * 1000, "ms", 5.0,
                       higher_is_better=False,
                       description=f"median of {REPEATS}; swap-ins {on['swapped_in']}, without swap {off['swapped_in']}")
