"""The shell's frame pacer (shell/pacing.py): 20 Hz while the machine has a core to spare, 10 Hz while
other work keeps its cores busy; the logic on given counters, the real counters under real busy
processes, and a streaming reply drawn at the pacer's rate."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psutil

from llmos.shell.app import ShellApp
from llmos.shell.pacing import BUSY_BELOW, FAST_HZ, FREE_ABOVE, SLOW_HZ, STALE_S, WINDOW_S, FramePacer

from .test_shell_streaming import stream_from_a_thread

FAST, SLOW = 1 / FAST_HZ, 1 / SLOW_HZ


class Counters:
    """A clock, the machine's idle seconds and the drawing thread's CPU seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = self.idle = self.own = 0.0

    def window(self, seconds: float, *, idle_cores: float, drawing_cores: float = 0.0) -> None:
        self.now += seconds
        self.idle += idle_cores * seconds
        self.own += drawing_cores * seconds

    def pacer(self) -> FramePacer:
        return FramePacer(idle=lambda: self.idle, own_cpu=lambda: self.own, clock=lambda: self.now)


def test_busy_cores_halve_the_rate_and_free_ones_restore_it():
    c = Counters()
    pacer = c.pacer()
    assert pacer.interval() == FAST  # nothing measured yet: the fast rate
    c.window(WINDOW_S, idle_cores=0.1)
    assert pacer.interval() == SLOW and pacer.spare == 0.1
    c.window(WINDOW_S, idle_cores=1.5)
    assert pacer.interval() == FAST and pacer.spare == 1.5


def test_a_window_spanning_a_pause_between_streams_starts_afresh_instead_of_counting_the_pause():
    """An agent's thinking streams in bursts without `start()`: the idle minute between two bursts must
    not make the next burst's first window look free."""
    c = Counters()
    pacer = c.pacer()
    pacer.start()
    c.window(WINDOW_S, idle_cores=0.1)
    assert pacer.interval() == SLOW
    c.window(60.0, idle_cores=2.0)  # a quiet minute: nothing drawn, the cores idle
    assert pacer.interval() == SLOW and pacer.spare == 0.1  # not measured: a window starts now
    c.window(WINDOW_S, idle_cores=0.1)  # the next burst decodes on busy cores again
    assert pacer.interval() == SLOW and abs(pacer.spare - 0.1) < 1e-9
    c.window(STALE_S, idle_cores=1.5)  # a window of STALE_S itself is still measured
    assert pacer.interval() == FAST and abs(pacer.spare - 1.5) < 1e-9


def test_what_the_drawing_itself_takes_counts_as_spare():
    """A view busy drawing on an otherwise idle machine is not a busy machine: its own CPU is spare."""
    c = Counters()
    pacer = c.pacer()
    pacer.start()
    c.window(WINDOW_S, idle_cores=0.2, drawing_cores=0.9)
    assert pacer.interval() == FAST and abs(pacer.spare - 1.1) < 1e-9


def test_the_rate_holds_between_the_thresholds_and_within_a_window():
    c = Counters()
    pacer = c.pacer()
    pacer.start()
    middle = (BUSY_BELOW + FREE_ABOVE) / 2
    c.window(WINDOW_S, idle_cores=middle)
    assert pacer.interval() == FAST  # between the thresholds: stays fast
    c.window(WINDOW_S, idle_cores=0.0)
    assert pacer.interval() == SLOW
    c.window(WINDOW_S, idle_cores=middle)
    assert pacer.interval() == SLOW  # ... and stays slow
    c.window(WINDOW_S / 2, idle_cores=2.0)  # too short a window to judge: the rate holds
    assert pacer.interval() == SLOW and pacer.spare == middle


BURN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"


def _until(pacer: FramePacer, slow: bool, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (pacer.interval() == SLOW) == slow:
            return True
        time.sleep(0.05)
    return False


def test_real_counters_see_every_core_busy_and_then_free():
    """Real psutil counters: one busy process per core makes the pacer slow; once they end, fast again."""
    pacer = FramePacer()
    pacer.start()
    cores = psutil.cpu_count() or 1
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(cores)]
    try:
        assert _until(pacer, True, 5), f"every core busy, yet {pacer.spare} cores spare"
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert _until(pacer, False, 10), f"the burners ended, yet only {pacer.spare} cores spare"


def test_a_reply_on_busy_cores_is_drawn_at_the_slow_rate():
    """Through the shell's own path (feed -> ReplyStream): with the pacer seeing no spare core, flushes
    come at least the slow interval apart once the first window is measured; every character arrives."""
    tokens = [f" w{i}" for i in range(400)]

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)) as pilot:
            app.pacer = FramePacer(idle=lambda: 0.0, own_cpu=lambda: 0.0)
            reply = await app.begin_reply()
            assert reply.pace == app.pacer.interval
            flushes = []
            flush = reply.flush

            async def timed_flush():
                flushes.append(time.monotonic())
                await flush()
            reply.flush = timed_flush

            await stream_from_a_thread(app, pilot, tokens, gap=0.004)
            assert app.last_reply["text"] == "".join(tokens)
            assert app.pacer.slow and reply.interval == SLOW
            slow_since = next(i for i, t in enumerate(flushes) if t - flushes[0] >= WINDOW_S + FAST) + 1
            gaps = [b - a for a, b in zip(flushes[slow_since:-2], flushes[slow_since + 1:-1])]  # the last: ReplyDone's
            assert len(gaps) >= 5 and min(gaps) >= SLOW * 0.9, gaps
    asyncio.run(go())


def test_counters_that_cannot_be_read_leave_the_fast_rate_and_never_fail_the_reply():
    calls = []

    def unreadable() -> float:
        calls.append(1)
        raise PermissionError("/proc/stat")
    now = [0.0]
    pacer = FramePacer(idle=unreadable, own_cpu=lambda: 0.0, clock=lambda: now[0])
    pacer.slow = True  # even after a busy reply
    for _ in range(4):
        now[0] += WINDOW_S
        assert pacer.interval() == FAST
    assert pacer.blind and len(calls) == 1  # tried once, then left alone
