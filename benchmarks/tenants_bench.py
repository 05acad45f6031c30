"""Tenant benchmarks (the tenants issue), each side by side in one run on the default llama.cpp model:

B10 fairness: two tenants keep 16 requests each in flight (for 16 batch slots) for WINDOW_S; one sends prompts 8x longer.
  Jain's index over the tokens each was served (prompt + completion), with fair share vs FIFO, and the
  aggregate tokens/s of both arms.
B11 isolation: an interactive tenant's p95 time to first token while a batch tenant keeps 32 requests
  queued, vs the same tenant on an idle kernel; FIFO's figure (one queue, arrival order) beside it.
B11b quotas: a tenant limited to QUOTA_TPM tokens/minute, asked at 4x that for QUOTA_S: the tokens it
  was served vs what its quota allows in that time.

FIFO arms boot the kernel with `fair_share = false` and give every tenant the normal class: one queue
in arrival order, as a server without tenants has. LLMOS_BENCH_SCALE (default 1) scales every window,
for quick runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time

from .registry import BenchContext, BenchResult, benchmark

SCALE = float(os.environ.get("LLMOS_BENCH_SCALE", "1"))
WINDOW_S = 60 * SCALE
QUOTA_S = 180 * SCALE
QUOTA_TPM = 6000
SHORT = "Describe the sea in one sentence."
LONG = " ".join(["Here is some background about harbours, ships, tides and weather."] * 8) + " " + SHORT
ASK = "What is the capital of France? Answer in one word."
STORY = "Write a long story about a lighthouse keeper and the storms she saw."


class _Kernel:
    """A kernel on a scratch LLMOS_HOME (removed after), its default model loaded."""

    def __init__(self, fair: bool) -> None:
        import llmos

        self.home = tempfile.mkdtemp(prefix="llmos-bench-tenants-")
        self.kernel = llmos.boot(home=self.home, load_entrypoints=False, fair_share=fair)
        self.kernel.load()

    def __enter__(self):
        return self.kernel

    def __exit__(self, *_exc) -> None:
        self.kernel.shutdown()
        shutil.rmtree(self.home, ignore_errors=True)


def _jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if any(xs) else 0.0


def _served(kernel, names: list[str]) -> tuple[list[int], int]:
    """Tokens (prompt + completion) served to each of `names`, and completion tokens of all of them."""
    usage = kernel.tenants.usage()
    rows = [usage.get(n, {}) for n in names]
    return [r.get("prompt_tokens", 0) + r.get("completion_tokens", 0) for r in rows], \
        sum(r.get("completion_tokens", 0) for r in rows)


def _backlog(kernel, tenant, prompt: str, depth: int, stop: threading.Event, **sampling) -> list[threading.Thread]:
    """`depth` client loops of `tenant`, each resubmitting `prompt` as soon as its last answer ends."""
    def loop() -> None:
        while not stop.is_set():
            handle = kernel.submit(prompt, tenant=tenant, temperature=0, ignore_eos=True, **sampling)
            while not handle.wait(0.2):
                if stop.is_set():
                    handle.cancel()
                    return

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(depth)]
    for t in threads:
        t.start()
    return threads


def _b10_arm(fair: bool, log) -> tuple[float, float]:
    from llmos.kernel.tenants.tenant import Tenant

    stop, threads = threading.Event(), []
    with _Kernel(fair) as kernel:
        try:
            threads += _backlog(kernel, Tenant("short"), SHORT, 16, stop, max_tokens=32)  # 32 clients, 16 slots
            threads += _backlog(kernel, Tenant("long"), LONG, 16, stop, max_tokens=32)
            time.sleep(min(5.0, WINDOW_S / 4))  # warm: both queues full
            (start, out0), t0 = _served(kernel, ["short", "long"]), time.monotonic()
            time.sleep(WINDOW_S)
            (end, out1), wall = _served(kernel, ["short", "long"]), time.monotonic() - t0
        finally:
            _stop(stop, threads)
    got = [b - a for a, b in zip(start, end)]
    log(f"B10 {'fair' if fair else 'FIFO'}: tokens served short {got[0]}, long {got[1]} in {wall:.0f} s "
        f"({sum(got) / wall:.0f} tok/s in all, {(out1 - out0) / wall:.1f} generated tok/s)")
    return _jain(got), (out1 - out0) / wall


def _stop(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for t in threads:
        t.join(60)


@benchmark("B10", "two backlogged tenants, one with prompts 8x longer: Jain's index over tokens served, fair vs FIFO")
def b10(ctx: BenchContext) -> list[BenchResult]:
    fifo_jain, fifo_tps = _b10_arm(False, ctx.log)
    fair_jain, fair_tps = _b10_arm(True, ctx.log)
    return [BenchResult("B10 Jain's index over tokens served (1 = equal)", 1.0, fair_jain, "index", 0.95,
                        description=f"fair share; FIFO's index {fifo_jain:.3f}; window {WINDOW_S:.0f} s"),
            BenchResult("B10 aggregate generated tokens/s, fair vs FIFO", fifo_tps, fair_tps, "tok/s", 0.95,
                        description="completion tokens of both tenants: the decode work the machine does (prompt "
                                    "tokens cost far less, so prompt + completion per second favours whoever "
                                    "serves long prompts)")]


def _p95_ttft(kernel, tenant, samples: int) -> float:
    ttfts = []
    for _ in range(samples):
        done = kernel.submit(ASK, tenant=tenant, max_tokens=2, temperature=0).result(600)
        ttfts.append(done.metrics["ttft_s"])
        time.sleep(0.5)
    return statistics.quantiles(ttfts, n=20)[-1]


def _b11_arm(fair: bool, log) -> tuple[float, float]:
    """(idle p95, p95 beside the batch backlog) of the interactive tenant, both on one warm kernel."""
    from llmos.kernel.tenants.tenant import Tenant

    samples = max(10, int(40 * SCALE)) if fair else 5  # FIFO: each waits out the whole queue
    desk = Tenant("desk", "interactive" if fair else "normal")
    nightly = Tenant("nightly", "batch" if fair else "normal")
    stop, threads = threading.Event(), []
    with _Kernel(fair) as kernel:
        try:
            _p95_ttft(kernel, desk, 5)  # warm
            idle = _p95_ttft(kernel, desk, max(10, int(40 * SCALE)))
            threads = _backlog(kernel, nightly, STORY, 48, stop, max_tokens=100)  # 16 running, 32 queued
            time.sleep(3)
            loaded = _p95_ttft(kernel, desk, samples)
        finally:
            _stop(stop, threads)
    log(f"B11 {'fair' if fair else 'FIFO'}: interactive p95 TTFT idle {idle * 1000:.1f} ms, beside the backlog "
        f"{loaded * 1000:.1f} ms ({samples} requests)")
    return idle, loaded


@benchmark("B11", "an interactive tenant's p95 TTFT while a batch tenant keeps 32 requests queued vs on an idle kernel")
def b11(ctx: BenchContext) -> BenchResult:
    _fifo_idle, fifo = _b11_arm(False, ctx.log)
    idle, loaded = _b11_arm(True, ctx.log)
    return BenchResult("B11 interactive p95 TTFT, idle vs beside a batch backlog", idle * 1000, loaded * 1000, "ms",
                       1 / 1.5, higher_is_better=False,
                       description=f"loaded/idle {loaded / idle:.2f}x (target <= 1.5x); FIFO {fifo * 1000:.0f} ms, "
                                   f"{fifo / idle:.0f}x")


@benchmark("B11b", "a tenant with a tokens-per-minute quota asked at 4x it: tokens served vs its quota")
def b11b(ctx: BenchContext) -> BenchResult:
    from llmos.kernel.errors import QuotaExceededError
    from llmos.kernel.tenants.tenant import Tenant

    with _Kernel(True) as kernel:
        metered = Tenant("metered", tokens_per_minute=QUOTA_TPM)
        cost = len(kernel.load().driver.tokenize(SHORT)) + 20
        interval = cost / (4 * QUOTA_TPM / 60)  # asks at 4x its quota
        served, refused, handles = 0, 0, []
        t0 = time.monotonic()
        deadline = t0 + QUOTA_S
        while (now := time.monotonic()) < deadline:
            try:
                handles.append(kernel.submit(SHORT, tenant=metered, max_tokens=20, temperature=0, ignore_eos=True))
            except QuotaExceededError:
                refused += 1
            time.sleep(max(0.0, t0 + (len(handles) + refused) * interval - now))
        for h in handles:
            done = h.result(120)
            served += done.usage["prompt_tokens"] + done.usage["completion_tokens"]
        allowed = QUOTA_TPM * QUOTA_S / 60
        ctx.log(f"B11b: served {served} tokens of {allowed:.0f} allowed, {len(handles)} admitted, {refused} refused")
    error = abs(served / allowed - 1)
    return BenchResult("B11b tokens served vs quota (1 - |error|)", 1.0, 1 - error, "fraction", 0.98,
                       description=f"{served} served of {allowed:.0f} allowed ({served / allowed - 1:+.1%}); "
                                   f"{refused} requests refused with 429; asked at 4x for {QUOTA_S:.0f} s")
