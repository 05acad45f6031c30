"""Request handles: what `kernel.submit()` returns to the caller.

The engine thread delivers `RequestOutput` events; the caller reads them synchronously (`stream`,
`result`) or from asyncio (`astream`, `aresult`). Cancelling goes back through the kernel so the
scheduler frees the sequence at the next step.
"""

from __future__ import annotations

import asyncio
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
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

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
            listeners = list(self._listeners)
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that reader's event loop is closed: forget it
                with self._cond:
                    if (loop, queue) in self._listeners:
                        self._listeners.remove((loop, queue))

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

    async def astream(self, idle: float | None = None) -> AsyncIterator[str]:
        """Text deltas as they come. With `idle`, an empty string is yielded whenever `idle` seconds pass
        without one (a server's keep-alive while the request waits in a queue or prefills)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        with self._cond:
            backlog = list(self._chunks)
            final = self._final
            if final is None:
                self._listeners.append((loop, queue))
        getter: asyncio.Future | None = None
        try:
            for chunk in backlog:
                yield chunk
            while final is None:
                if idle is None:
                    event = await queue.get()
                else:
                    getter = getter or asyncio.ensure_future(queue.get())  # kept across idle ticks: nothing lost
                    if not (await asyncio.wait({getter}, timeout=idle))[0]:
                        yield ""
                        continue
                    event, getter = getter.result(), None
                if event.text:
                    yield event.text
                if event.finished:
                    final = event
            self._raise_if_error()
        finally:
            if getter is not None:
                getter.cancel()
            with self._cond:
                if (loop, queue) in self._listeners:
                    self._listeners.remove((loop, queue))

    async def aresult(self, *, check: bool = True) -> Completion:
        try:
            async for _ in self.astream():
                pass
        except tuple(_ERRORS.values()):
            if check:
                raise
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
