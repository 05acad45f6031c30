"""How often a streaming reply is drawn: FAST_HZ while the machine has a core to spare, SLOW_HZ while
other work keeps its cores busy.

Why: on a machine whose cores decode (a model on this machine's CPU, the shell attached to the resident
kernel or booted in process), every millisecond the shell draws costs the decode about as much
(README, B8b), and frames cost the same whatever they hold; drawing at half the rate gives that CPU
back. On a core nobody else needs the fast rate costs nothing and keeps a token's way to the screen
under 100 ms (B8a). Giving the shell a lower priority instead starved it: its autogroup at niceness 10
left replies frozen for 1-2 s on a machine decoding on both cores (docs/shell.md).

Boundary: reads the machine's idle CPU time (psutil) and the drawing thread's own CPU time, nothing
of Textual or the kernel; `ReplyStream` asks `interval()` at each frame.
"""

from __future__ import annotations

import time
from typing import Callable

import psutil

FAST_HZ, SLOW_HZ = 20.0, 10.0
#: the cores the rest of the machine leaves idle (counting what the drawing thread itself takes as
#: idle) below which the cores are busy, and above which they are free again; between the two the
#: rate stays as it is, so a machine hovering at one figure does not flip the rate every window
BUSY_BELOW, FREE_ABOVE = 0.5, 0.8
#: the shortest span the machine's idle time is measured over: the counters tick every 10 ms per core
WINDOW_S = 0.25
#: a window longer than this spans a pause between streams (an agent's next thought, a reply after a
#: quiet minute): it is not measured, but started afresh, so the pause's idle cores do not count (a reply
#: slower than a token a second is then never measured and keeps its rate: at that pace frames cost nothing)
STALE_S = 4 * WINDOW_S


def machine_idle_seconds() -> float:
    """Seconds all cores have spent idle (waiting for I/O counts as idle) since boot."""
    times = psutil.cpu_times()
    return times.idle + getattr(times, "iowait", 0.0)


class FramePacer:
    """`interval()`, asked by the drawing thread at each frame: seconds until the next one. The clock,
    the machine's idle time and the thread's CPU time are parameters so the logic is testable."""

    def __init__(self, *, idle: Callable[[], float] = machine_idle_seconds,
                 own_cpu: Callable[[], float] = time.thread_time, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle, self._own_cpu, self._clock = idle, own_cpu, clock
        self.slow = False  # the cores were busy at the last measure
        self.spare: float | None = None  # cores left idle over the last window (None: not measured yet)
        self.blind = False  # the counters could not be read: the fast rate, always
        self._mark: tuple[float, float, float] | None = None  # (clock, idle, own CPU) at the window's start

    def start(self) -> None:
        """A reply begins: measure from now (the rate keeps the last reply's until the first window ends).
        A stream that does not call it (an agent's thinking) starts afresh at its first frame after a
        pause longer than STALE_S."""
        self._mark = self._read(self._clock())

    def _read(self, now: float) -> tuple[float, float, float] | None:
        """(now, idle, own CPU), or None for good where the counters cannot be read (a sandbox without
        /proc/stat): the pacer then keeps the fast rate instead of failing the reply it paces."""
        if self.blind:
            return None
        try:
            return (now, self._idle(), self._own_cpu())
        except (OSError, RuntimeError, psutil.Error):
            self.blind, self.slow = True, False
            return None

    def interval(self) -> float:
        # 1. a window shorter than WINDOW_S keeps the rate: the counters are too coarse to say more
        now = self._clock()
        if self._mark is None or now - self._mark[0] > STALE_S:
            self.start()
        elif now - self._mark[0] >= WINDOW_S:
            started, idle, own = self._mark
            self._mark = self._read(now)
            if self._mark is None:
                return 1.0 / FAST_HZ
            # 2. cores the rest of the machine left idle: the idle time, plus what drawing took
            self.spare = (self._mark[1] - idle + self._mark[2] - own) / (now - started)
            # 3. hysteresis between the two thresholds
            if self.spare < BUSY_BELOW:
                self.slow = True
            elif self.spare > FREE_ABOVE:
                self.slow = False
        return 1.0 / (SLOW_HZ if self.slow else FAST_HZ)
