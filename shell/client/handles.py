"""What a `Client`'s `submit` and `spawn` return: a `RemoteHandle` (a request streaming over SSE) and a
`RemoteProcess` (an agent and its event stream), with the same methods as the kernel's
`RequestHandle` and `Process`.

A handle opens its stream when it is made, so `submit` raises the server's typed error (bad input,
unknown model, full queue) at once, as `Kernel.submit` does. `cancel()` kills the request in the
kernel and drops the stream; a dropped stream cancels it too (the server notices the disconnect).
"""

from __future__ import annotations

import threading
from typing import Any, AsyncIterator, Callable, Iterator


from llmos.kernel.errors import LlmosError, ProcessNotFoundError, RequestCancelledError, RequestFailedError, RequestTimeoutError
from llmos.kernel.proc.process_state import AgentEvent, ProcessState
from llmos.kernel.sched.completion import Completion
from llmos.kernel.sched.request import RequestStatus

from .transport import OpenStream, Transport, typed_error

_ERRORS = {RequestStatus.FINISHED_FAILED: RequestFailedError, RequestStatus.FINISHED_CANCELLED: RequestCancelledError,
           RequestStatus.FINISHED_TIMED_OUT: RequestTimeoutError}


def _status(name: str) -> RequestStatus:
    return RequestStatus[str(name).upper()]


class _Reply:
    """What a request's stream has said so far: text, the final `llmos` object, or the error."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.final: dict[str, Any] | None = None
        self.error: LlmosError | None = None


def _read(stream: OpenStream, reply: _Reply, chat: bool, transport: Transport) -> Iterator[None]:
    """Reads the stream one event per step into `reply`. After the final object it reads on to the end,
    so a finished request's stream is closed here, at once.

    It holds no reference to its handle, so a handle dropped mid-stream is freed (and its stream
    closed) when its last reference goes, never later by the garbage collector: httpcore's own
    generators close a connection under the pool's lock, and a collection can run inside that lock
    (a self-deadlock, seen in CI)."""
    try:
        for obj in stream.objects():
            if "error" in obj and "choices" not in obj:
                reply.final = obj.get("llmos")
                if reply.final is None:
                    reply.error = typed_error(obj, 500)
                continue
            choice = obj["choices"][0]
            text = choice.get("delta", {}).get("content") if chat else choice.get("text")
            if text:
                reply.chunks.append(text)
            if "llmos" in obj:
                reply.final = obj["llmos"]
                continue
            yield
    except LlmosError as exc:
        reply.error = exc
    if reply.final is None and reply.error is None:
        reply.error = transport.gone(ConnectionError("the stream ended without a result"))


class RemoteHandle:
    def __init__(self, transport: Transport, path: str, body: dict[str, Any], model: str | None) -> None:
        self._transport = transport
        self._stream = OpenStream(transport, "POST", path, json={**body, "stream": True})  # raises if refused
        self.id: str = self._stream.response.headers.get("x-llmos-request-id", "")
        self.model = model
        self._lock = threading.Lock()  # one reader of the stream at a time
        self._reply = _Reply()
        self._reader = _read(self._stream, self._reply, "messages" in body, transport)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def _chunks(self) -> list[str]:
        return self._reply.chunks

    @property
    def _final(self) -> dict[str, Any] | None:
        return self._reply.final

    @property
    def _error(self) -> LlmosError | None:
        return self._reply.error

    @property
    def done(self) -> bool:
        return self._final is not None or self._error is not None

    @property
    def status(self) -> RequestStatus:
        return _status(self._final["status"]) if self._final else RequestStatus.RUNNING

    def cancel(self) -> None:
        """Cancel the request in the kernel (no-op once finished): the stream then ends as cancelled."""
        if self.done:
            return
        try:
            self._transport.call("POST", f"/llmos/kill/{self.id}")
        except ProcessNotFoundError:
            pass  # it finished meanwhile: the stream has its result
        except LlmosError:
            self._stream.close()  # the server is gone: nothing runs any more

    # -- reading (one reader at a time pulls the stream: `_pump` under `_lock`) -----------------------

    def _pump(self) -> None:
        with self._lock:
            if not self.done:
                next(self._reader, None)

    def _raise_if_error(self) -> None:
        if self._error is not None:
            raise self._error
        status = self.status
        if status in _ERRORS:
            raise _ERRORS[status](f"{self.id}: {self._final.get('error') or status.finish_reason}")

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Yield text deltas (from the first) as they arrive; raise the typed error if the request fails."""
        read = 0
        while True:
            if read >= len(self._chunks) and not self.done:
                self._pump()
            pending = self._chunks[read:]
            read += len(pending)
            yield from pending
            if self.done and read >= len(self._chunks):
                break
        self._raise_if_error()

    __iter__ = stream

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (at most `timeout` seconds); whether it finished."""
        if timeout is None:
            while not self.done:
                self._pump()
            return True
        reader = threading.Thread(target=self.wait, daemon=True)
        reader.start()
        reader.join(timeout)
        return self.done

    def result(self, timeout: float | None = None, *, check: bool = True) -> Completion:
        """Block until finished. With `check`, failed/cancelled/timed-out requests raise."""
        if not self.wait(timeout):
            raise RequestTimeoutError(f"{self.id} did not finish within {timeout}s")
        if self._error is not None:
            raise self._error  # the server went away: there is no result to return
        if check:
            self._raise_if_error()
        f = self._final or {}
        return Completion(request_id=f.get("request_id", self.id), model=f.get("model", self.model or ""),
                          text="".join(self._chunks), token_ids=tuple(f.get("token_ids", ())), status=self.status,
                          error=f.get("error"), metrics=f.get("metrics") or {}, sources=tuple(f.get("sources", ())),
                          prompt_logprobs=tuple(f["prompt_logprobs"]) if "prompt_logprobs" in f else None)

    async def astream(self) -> AsyncIterator[str]:
        import asyncio

        chunks = self.stream()
        done = object()
        while True:
            chunk = await asyncio.to_thread(next, chunks, done)
            if chunk is done:
                return
            yield chunk

    async def aresult(self, *, check: bool = True) -> Completion:
        import asyncio

        return await asyncio.to_thread(self.result, check=check)


class RemoteProcess:
    """An agent in the resident kernel: its events (SSE), its answer, kill. With an `approve`
    callback, its approval questions are asked here and answered back."""

    def __init__(self, transport: Transport, pid: str, session: str, approve: Callable | None,
                 token: str | None = None) -> None:
        self._transport = transport
        self._token = token  # the spawner's: its approvals are answered with it; its stream's end kills
        self.pid, self.session_id = pid, session
        self.approve = approve
        self._events: list[AgentEvent] = []
        self._end: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> ProcessState:
        if self._end is None:
            row = self._row()
            return ProcessState[row["state"].upper()]
        return ProcessState[self._end["state"].upper()]

    @property
    def answer(self) -> str | None:
        return (self._end or self._row()).get("answer")

    @property
    def error(self) -> str | None:
        return (self._end or self._row()).get("error")

    @property
    def step(self) -> int:
        return int(self.as_row().get("step") or 0)

    @property
    def tokens(self) -> int:
        return int(self.as_row().get("output_tokens") or 0)

    def _row(self) -> dict[str, Any]:
        return self._transport.call("GET", f"/llmos/agents/{self.pid}")

    def events(self, timeout: float | None = None) -> Iterator[AgentEvent]:
        """Every event from the start, then new ones as they happen, until the process ends."""
        with self._lock:
            yield from list(self._events)
            if self._end is not None:
                return
            stream = OpenStream(self._transport, "GET", f"/llmos/agents/{self.pid}/events",
                                params={"since": len(self._events), "token": self._token})
            for obj in stream.objects():
                if "end" in obj:
                    self._end = obj["end"]
                    continue  # on to the stream's end: it closes here
                kind, step, text = obj.pop("kind"), obj.pop("step"), obj.pop("text", "")
                event = AgentEvent(kind, step, text, obj)
                self._events.append(event)
                if kind == "approval" and self.approve is not None:
                    self._answer(event)
                yield event

    def _answer(self, event: AgentEvent) -> None:
        answer = self.approve(event.data["tool"], frozenset(event.data.get("missing", ())))
        self._transport.call("POST", f"/llmos/agents/{self.pid}/approve",
                             json={"id": event.data["id"], "answer": answer, "token": self._token})

    def history(self) -> list[AgentEvent]:
        return list(self._events)

    def wait(self, timeout: float | None = None) -> bool:
        for _ in self.events(timeout):
            pass
        return True

    def kill(self) -> None:
        try:
            self._transport.call("POST", f"/llmos/kill/{self.pid}")
        except LlmosError:
            pass  # it ended meanwhile

    def as_row(self) -> dict[str, Any]:
        return self._end or self._row()
