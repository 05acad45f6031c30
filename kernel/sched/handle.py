"""Request handles: what `kernel.submit()` returns to the caller.

The engine thread delivers `RequestOutput` events; the caller reads them synchronously (`stream`,
`result`) or from asyncio (`astream`, `aresult`). Cancelling goes back through the kernel so the
scheduler frees the sequence at the next step.

An async reader's event loop is woken only while that reader waits for output (`_Waiter`): a reader
pacing itself (`astream(every=...)`, a server streaming at a client's cadence) sleeps through the
tokens decoded meanwhile and takes them in one piece, so its loop does not wake once per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import AsyncIterator, Callable, Iterator

from ..errors import RequestCancelledError, RequestFailedError, RequestTimeoutError
from .completion import Completion
from .request import Request, RequestStatus
from .scheduler import RequestOutput


_ERRORS = {
    RequestStatus.FINISHED_FAILED: RequestFailedError,
    RequestStatus.FINISHED_CANCELLED: RequestCancelledError,
    RequestStatus.FINISHED_TIMED_OUT: RequestTimeoutError,
}


class RequestHandle:
    def __init__(self, request: Request, cancel: Callable[[str], None]) -> None:
        self.request = request
        self._cancel = cancel
        self._cond = threading.Condition()
        self._chunks: list[str] = []
        self._tokens: list[int] = []
        self._final: RequestOutput | None = None
        self._waiters: list[_Waiter] = []  # async readers (astream)

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def done(self) -> bool:
        return self._final is not None

    @property
    def status(self) -> RequestStatus:
        return self._final.status if self._final else self.request.status

    def cancel(self) -> None:
        """Cancel the request (no-op once finished); its slot is freed at the next engine step."""
        if not self.done:
            self._cancel(self.id)

    # -- delivery (engine thread) ----------------------------------------------------------------

    def deliver(self, event: RequestOutput) -> None:
        with self._cond:
            if self._final is not None:
                return
            if event.text:
                self._chunks.append(event.text)
            self._tokens.extend(event.token_ids)
            if event.finished:
                self._final = event
            self._cond.notify_all()
            woken = [w for w in self._waiters if w.wants(event)]
            for waiter in woken:
                waiter.waiting = _Waiter.NOT
        for waiter in woken:
            try:
                waiter.loop.call_soon_threadsafe(waiter.event.set)
            except RuntimeError:  # that reader's event loop is closed: forget it
                with self._cond:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    # -- sync consumption ------------------------------------------------------------------------

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Yield text deltas as they are produced; raise the typed error if the request fails."""
        read = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while read >= len(self._chunks) and self._final is None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise RequestTimeoutError(f"no output from {self.id} within {timeout}s")
                    self._cond.wait(remaining)
                pending = self._chunks[read:]
                read = len(self._chunks)
                final = self._final
            yield from pending
            if final is not None and read >= len(self._chunks):
                self._raise_if_error()
                return

    __iter__ = stream

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._final is not None, timeout)

    def result(self, timeout: float | None = None, *, check: bool = True) -> Completion:
        """Block until finished. With `check`, failed/cancelled/timed-out requests raise."""
        if not self.wait(timeout):
            raise RequestTimeoutError(f"{self.id} did not finish within {timeout}s")
        if check:
            self._raise_if_error()
        return self._completion()

    # -- async consumption -----------------------------------------------------------------------

    async def astream(self, idle: float | None = None, every: float | None = None) -> AsyncIterator[str]:
        """Text deltas as they come. With `idle`, an empty string is yielded whenever `idle` seconds pass
        without one (a server's keep-alive while the request waits in a queue or prefills). With `every`
        (seconds), deltas come at most once per `every`, each joining what was decoded since the last
        (the first at once, the last as soon as the request ends)."""
        loop = asyncio.get_running_loop()
        read, due = 0, 0.0  # chunks taken; when the next delta may go (with `every`)
        with self._waiting(loop) as waiter:
            while True:
                # 1. pacing: sleep until the next delta is due, woken early only by the request's end (a
                #    wake-up meant for an earlier wait sleeps again)
                while every and loop.time() < due and self._final is None:
                    await self._wait(waiter, _Waiter.FINAL, due - loop.time(), read)
                # 2. take what has come (or get ready to be woken by what comes next)
                with self._cond:
                    pending, read, final = self._chunks[read:], len(self._chunks), self._final
                if pending:
                    if every:
                        due = loop.time() + every
                        yield "".join(pending)
                    else:
                        for chunk in pending:
                            yield chunk
                    continue
                if final is not None:
                    break
                # 3. nothing yet: wait for output, a keep-alive every `idle` seconds
                if not await self._wait(waiter, _Waiter.ANY, idle, read) and idle is not None:
                    yield ""
        self._raise_if_error()

    @contextlib.contextmanager
    def _waiting(self, loop: asyncio.AbstractEventLoop) -> Iterator["_Waiter"]:
        """An async reader on `loop`, known to `deliver` for as long as it reads."""
        waiter = _Waiter(loop)
        with self._cond:
            self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            with self._cond:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _wait(self, waiter: "_Waiter", wants: int, timeout: float | None, read: int) -> bool:
        """Sleep until the engine delivers what `wants` says (True; now and then early, for a wake-up
        meant for an earlier wait) or `timeout` passes (False). Returns at once when it is already
        there (`read`: the chunks the reader has): the check and the arming are one step under the lock."""
        with self._cond:
            if self._final is not None or (wants == _Waiter.ANY and len(self._chunks) > read):
                return True
            waiter.event.clear()
            waiter.waiting = wants
        try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races the wake-up
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiter.waiting = _Waiter.NOT

    async def aresult(self, *, check: bool = True) -> Completion:
        """Async twin of `result()`: its loop is woken once, by the request's end, not per token."""
        with self._waiting(asyncio.get_running_loop()) as waiter:
            while self._final is None:
                await self._wait(waiter, _Waiter.FINAL, None, 0)
        if check:
            self._raise_if_error()
        return self._completion()

    # -- helpers ---------------------------------------------------------------------------------

    def _raise_if_error(self) -> None:
        final = self._final
        if final is not None and final.status in _ERRORS:
            raise _ERRORS[final.status](f"{self.id}: {final.error or final.status.finish_reason}")

    def _completion(self) -> Completion:
        final = self._final
        assert final is not None
        return Completion(
            request_id=self.id, model=self.request.model, text="".join(self._chunks),
            token_ids=tuple(self._tokens), status=final.status, error=final.error,
            metrics=self.request.metrics.as_dict(), sources=tuple(self.request.sources),
            prompt_logprobs=self._prompt_logprobs(),
        )

    def _prompt_logprobs(self) -> tuple[float, ...] | None:
        req = self.request
        if not req.sampling.prompt_logprobs or req.status not in (RequestStatus.FINISHED_STOPPED,
                                                                  RequestStatus.FINISHED_LENGTH):
            return None
        scored = req.prompt_logprobs
        return tuple(scored[p] for p in range(1, len(req.prompt_token_ids)) if p in scored)


class _Waiter:
    """An async reader of a handle: its loop's event, set from the engine thread only while the reader
    waits for what `waiting` says (any output, or only the request's end)."""

    NOT, ANY, FINAL = 0, 1, 2

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.event = loop, asyncio.Event()
        self.waiting = _Waiter.NOT

    def wants(self, event: RequestOutput) -> bool:
        return self.waiting == _Waiter.ANY or (self.waiting == _Waiter.FINAL and event.finished)


def cancel_on_close(handle: RequestHandle) -> Iterator[str]:
    """`handle.stream()` that cancels the request when the iterator is closed early."""
    try:
        yield from handle.stream()
    finally:
        handle.cancel()


async def acancel_on_close(handle: RequestHandle) -> AsyncIterator[str]:
    """Async twin of `cancel_on_close`."""
    try:
        async for chunk in handle.astream():
            yield chunk
    finally:
        handle.cancel()
