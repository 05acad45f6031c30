"""Device gates: engines whose drivers share one compute resource take turns by urgency, not arrival.

All llama.cpp models of a process run on one compute thread (drivers/llamacpp_lib.py `on_device`); left
alone, that thread serves engines first come first served, so a batch tenant on model A takes every
other step from an interactive tenant on model B. Each engine whose driver names a `compute_group`
passes its steps through that group's gate:

1. `acquire(engine, key)` before a driver step: the engine's claim is `key` = (priority, service) of
   its most urgent owner (Scheduler.urgency); the turn goes to the least claim (more urgent first,
   then the least-served owner: the fair-share ledger is shared), ties by claim order.
2. `release(engine, next_key)` after the step: the engine keeps a claim for its next step while it
   folds results in (a holder that still has the most urgent work keeps its turn instead of losing
   it to whoever was waiting), or drops it (`None`) when it has nothing left. A kept claim that is not
   taken up within `CLAIM_TTL_S` lapses, so a claim can delay others, never block them.

3. A claim more urgent (a lower priority value) than the holder's pulls the holder's `interrupt` (drivers
   that can abort a step in flight: llama.cpp's decodes), so it waits a graph node, not a whole step.

With `fifo=True` every key is equal: turns go in claim order (the old behaviour, for benchmarks).
Boundaries: pure Python and a condition variable; knows nothing of drivers.
"""

from __future__ import annotations

import itertools
import threading
import time

#: how long a released engine's claim for its next step holds
CLAIM_TTL_S = 0.05


class DeviceGate:
    def __init__(self, name: str, *, fifo: bool = False) -> None:
        self.name, self.fifo = name, fifo
        self._cond = threading.Condition()
        self._holder: str | None = None
        self._claims: dict[str, tuple[tuple, int, float | None]] = {}  # engine -> (key, order, lapses at)
        self._order = itertools.count()
        self.turns: dict[str, int] = {}
        self._interrupts: dict[str, object] = {}  # engine -> callable that aborts its step in flight

    def register(self, engine: str, interrupt) -> None:
        """`interrupt()` aborts `engine`'s step in flight (returns False when it cannot)."""
        with self._cond:
            self._interrupts[engine] = interrupt

    def acquire(self, engine: str, key: tuple) -> None:
        with self._cond:
            claim = self._claims.get(engine)
            order = claim[1] if claim is not None else next(self._order)
            self._claims[engine] = ((0,) if self.fifo else tuple(key), order, None)
            holder = self._holder
            if holder is not None and not self.fifo and tuple(key)[:1] < self._claims.get(holder, ((99,),))[0][:1]:
                interrupt = self._interrupts.get(holder)
                if interrupt is not None:
                    interrupt()  # the holder's step ends at its next graph node, to be redone later
            while True:
                best, wait = self._best()
                if self._holder is None and best == engine:
                    break
                self._cond.wait(wait)
            self._holder = engine
            self.turns[engine] = self.turns.get(engine, 0) + 1

    def release(self, engine: str, next_key: tuple | None) -> None:
        with self._cond:
            if self._holder == engine:
                self._holder = None
            if next_key is None:
                self._claims.pop(engine, None)
            else:  # behind equal claims made meanwhile: equal engines alternate
                key = (0,) if self.fifo else tuple(next_key)
                self._claims[engine] = (key, next(self._order), time.monotonic() + CLAIM_TTL_S)
            self._cond.notify_all()

    def forget(self, engine: str) -> None:
        """An engine that stops (its model unloads) withdraws its claim."""
        self.release(engine, None)
        with self._cond:
            self._interrupts.pop(engine, None)

    def _best(self) -> tuple[str | None, float | None]:
        """The engine whose claim wins now, and how long until a kept claim lapses (None: no timer)."""
        now = time.monotonic()
        for engine, (_key, _order, lapses) in list(self._claims.items()):
            if lapses is not None and lapses <= now:
                del self._claims[engine]
        if not self._claims:
            return None, None
        best = min(self._claims, key=lambda e: self._claims[e][:2])
        lapses = [c[2] - now for c in self._claims.values() if c[2] is not None]
        return best, (max(0.001, min(lapses)) if lapses else None)


class Gates:
    """The gate of each compute group, made on first use."""

    def __init__(self, *, fifo: bool = False) -> None:
        self.fifo = fifo
        self._gates: dict[str, DeviceGate] = {}
        self._lock = threading.Lock()

    def get(self, group: str | None) -> DeviceGate | None:
        if group is None:
            return None
        with self._lock:
            if group not in self._gates:
                self._gates[group] = DeviceGate(group, fifo=self.fifo)
            return self._gates[group]
