"""The engine loop: one thread per loaded model instance, driving scheduler and driver.

Boundaries: the engine owns the thread, the lock around the scheduler and the delivery of events to
request handles. It never interprets tokens (scheduler) nor touches the device (driver).

A driver exception fails only the requests of that step (FINISHED_FAILED with the error); the other
running requests are preempted so they are rebuilt from scratch, the driver is reloaded, and the loop
keeps serving.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable

from ..errors import KernelShutdownError
from .handle import RequestHandle
from .gate import DeviceGate
from .interface import SchedulerOutput
from .request import Priority, Request, RequestStatus
from .scheduler import RequestOutput, Scheduler

log = logging.getLogger("llmos.engine")

#: longest idle wait; bounded so deadlines of waiting requests are noticed
IDLE_POLL_S = 0.25


class Engine:
    def __init__(self, name: str, driver, scheduler: Scheduler,
                 on_finish: Callable[[Request], None] | None = None, gate: DeviceGate | None = None) -> None:
        self.name = name
        self.gate = gate  # shared with the engines of the same compute group (gate.py)
        self._interrupt = getattr(driver, "interrupt", None)  # aborts a step in flight (llama.cpp decodes)
        if gate is not None and self._interrupt is not None:
            gate.register(name, self._interrupt)
        self.driver = driver
        self.scheduler = scheduler
        self._on_finish = on_finish
        self._cond = threading.Condition()
        self._handles: dict[str, RequestHandle] = {}
        self._stopping = False
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self.steps = 0
        self.failures = 0
        self.service_s: float | None = None  # moving average of a request's time from admission to its end
        self.last_used = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"llmos-engine-{name}", daemon=True)
        self._thread.start()

    # -- API used by the kernel (any thread) ---------------------------------------------------------

    def submit(self, request: Request, handle: RequestHandle) -> None:
        with self._cond:
            if self._stopping:
                raise KernelShutdownError("the kernel is shutting down: no new requests")
            self.scheduler.add_request(request)  # may raise QueueFullError / PromptTooLongError
            self._handles[request.request_id] = handle
            self.last_used = time.monotonic()
            self._cond.notify_all()
            outranks = self.scheduler.outranks_running(request)
        if outranks and self._interrupt is not None:
            self._interrupt()  # a step of less urgent decodes in flight ends now and is redone after

    def cancel(self, request_id: str, status: RequestStatus = RequestStatus.FINISHED_CANCELLED,
               reason: str | None = None) -> bool:
        with self._cond:
            if self.scheduler.get(request_id) is None:
                return False
            self.scheduler.finish_requests([request_id], status, reason or "cancelled")
            events = self.scheduler.drain()
            self._cond.notify_all()
        self._dispatch(events)
        return True

    def call(self, fn: Callable[[], Any], timeout: float | None = 300) -> Any:
        """Run `fn` on the engine thread between two steps (never during a driver step) and return
        its result: how adapters are loaded into a driver that is serving requests."""
        if threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise KernelShutdownError("the engine is stopping")
            self._calls.append((fn, future))
            self._cond.notify_all()
        return future.result(timeout)

    def _run_calls(self) -> None:
        while True:
            with self._cond:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                    future.set_exception(exc)

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._handles)

    def requests(self) -> list[Request]:
        with self._cond:
            return self.scheduler.requests()

    def queue(self) -> tuple[list[Request], dict[str, int]]:
        """Its requests, and each waiting one's place in line."""
        with self._cond:
            return self.scheduler.requests(), self.scheduler.queue_positions()

    def eta_s(self, position: int) -> float | None:
        """Seconds until the request at `position` in line starts, from recent requests' service times."""
        if self.service_s is None:
            return None
        return math.ceil(position / self.scheduler.config.max_running) * self.service_s

    def stop(self, timeout: float = 120.0) -> bool:
        """Cancel everything still queued or running, then join the loop thread; False if it is
        still inside a driver step after `timeout` (the caller must not unload the driver then)."""
        with self._cond:
            self._stopping = True
            ids = [r.request_id for r in self.scheduler.requests()]
            self.scheduler.finish_requests(ids, RequestStatus.FINISHED_CANCELLED, "kernel shutdown")
            events = self.scheduler.drain()
            self._cond.notify_all()
        self._dispatch(events)
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if self.gate is not None:
            self.gate.forget(self.name)
        with self._cond:
            pending, self._calls = list(self._calls), deque()
        for _fn, future in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(KernelShutdownError("the engine stopped"))
        return stopped

    # -- the loop (engine thread) ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception:  # noqa: BLE001 - a bug must not kill the model's only thread
                log.exception("engine %s: unexpected error; failing the requests in flight", self.name)
                with self._cond:
                    ids = [r.request_id for r in self.scheduler.requests()]
                    self.scheduler.finish_requests(ids, RequestStatus.FINISHED_FAILED, "internal engine error")
                    events = self.scheduler.drain()
                self._dispatch(events)

    def _step(self) -> bool:
        """One loop iteration; False when the engine has stopped."""
        self._run_calls()
        with self._cond:
            while not self.scheduler.has_requests() and not self._stopping and not self._calls:
                self._cond.wait()
            if self._calls:
                return True
            if self._stopping and not self.scheduler.has_requests():
                return False
            # 1. Decide this step.
            sched = self.scheduler.schedule()
            events = self.scheduler.drain()
            urgency = self.scheduler.urgency()
        self._dispatch(events)
        if sched.is_empty:
            if self.gate is not None:
                self.gate.release(self.name, None)  # nothing to run: no claim on the device
            self._idle_wait()
            return True
        # 2. Run it on the device, outside the lock so submits and cancels never wait on it; engines
        #    sharing the device take turns by urgency (gate.py).
        if self.gate is not None:
            self.gate.acquire(self.name, urgency or (len(Priority), 0.0))
        next_claim = None
        try:
            output = self.driver.execute(sched)
        except Exception as exc:  # noqa: BLE001 - any driver failure ends in FINISHED_FAILED
            self._recover(sched, exc)
            return True
        finally:
            if self.gate is not None:
                with self._cond:
                    next_claim = self.scheduler.urgency()
                self.gate.release(self.name, next_claim)
        # 3. Fold the results back in and stream them out.
        with self._cond:
            self.scheduler.update_from_output(sched, output)
            events = self.scheduler.drain()
            self.steps += 1
        self._dispatch(events)
        return True

    def _idle_wait(self) -> None:
        with self._cond:
            deadline = self.scheduler.next_deadline()
            wait = IDLE_POLL_S if deadline is None else max(0.0, min(IDLE_POLL_S, deadline - time.monotonic()))
            self._cond.wait(wait)

    def _recover(self, sched: SchedulerOutput, exc: Exception) -> None:
        self.failures += 1
        message = f"driver {self.driver.name} failed: {type(exc).__name__}: {exc}"
        log.error("%s (step %d); reloading the driver", message, sched.step)
        with self._cond:
            self.scheduler.finish_requests(list(sched.num_scheduled_tokens), RequestStatus.FINISHED_FAILED, message)
            self.scheduler.preempt_all()
            events = self.scheduler.drain()
        self._dispatch(events)
        if self._stopping:  # being unloaded: no reload
            return
        try:
            self.driver.unload()
            self.driver.load()
        except Exception as reload_exc:  # noqa: BLE001
            log.error("reloading driver %s failed: %s", self.driver.name, reload_exc)
            with self._cond:
                ids = [r.request_id for r in self.scheduler.requests()]
                self.scheduler.finish_requests(ids, RequestStatus.FINISHED_FAILED,
                                               f"{message}; reload failed: {reload_exc}")
                events = self.scheduler.drain()
            self._dispatch(events)

    def _dispatch(self, events: list[RequestOutput]) -> None:
        for event in events:
            handle = self._handles.get(event.request_id)
            if handle is None:
                continue
            if event.finished:
                with self._cond:
                    self._handles.pop(event.request_id, None)
                    self.last_used = time.monotonic()  # idle from here (keep_alive counts from the last finish)
                started = handle.request.metrics.first_scheduled
                if started is not None:
                    took = self.last_used - started
                    self.service_s = took if self.service_s is None else 0.8 * self.service_s + 0.2 * took
            handle.deliver(event)
            if event.finished and self._on_finish is not None:
                try:
                    self._on_finish(handle.request)
                except Exception:  # noqa: BLE001 - an observer must not break the loop
                    log.exception("on_finish observer failed")
