"""HTTP to a served kernel, over its Unix socket or TCP (httpx), and back to llmos's typed errors.

Every error the server answers (OpenAI's shape: {"error": {"message", "type", "param", "code"}}) comes
back as the `LlmosError` subclass of that `code`, with the same message and `param`, so a program
catches the same exceptions whether its kernel is in-process or resident. A server that cannot be
reached, or that dies mid-answer, is a `DaemonNotRunningError` saying so: never a hang, never a raw
httpx traceback. SSE streams are read line by line (`events`).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote

import httpx

from llmos.kernel.errors import DaemonNotRunningError, LlmosError

#: seconds to connect, and to wait for a JSON answer (a model load can take minutes)
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 600.0
#: seconds a stream may stay silent before the server counts as hung (it writes a keep-alive every 10 s)
STREAM_IDLE_S = 60.0


def _error_classes() -> dict[str, type[LlmosError]]:
    """code -> the most general class that declares it (every LlmosError subclass llmos defines)."""
    from llmos.kernel.memfs import paths  # noqa: F401 - each import registers its errors' subclasses
    from llmos.kernel.modules import store, table  # noqa: F401
    from llmos.kernel.proc import sessions, structured  # noqa: F401
    from llmos.kernel.tools import capabilities, jobs, tools  # noqa: F401

    found: dict[str, type[LlmosError]] = {}
    queue: list[type[LlmosError]] = [LlmosError]
    while queue:
        cls = queue.pop(0)
        code = cls.__dict__.get("code")
        if code and code not in found:
            found[code] = cls
        queue.extend(cls.__subclasses__())
    return found


_CLASSES: dict[str, type[LlmosError]] | None = None


def _bare(cls: type[LlmosError]) -> LlmosError:
    """An instance of `cls` without running its constructor (classes that also derive from OSError
    need OSError's allocator: the first built-in `__new__` along the MRO that accepts it)."""
    for base in cls.__mro__:
        if "__new__" in base.__dict__:
            try:
                return base.__new__(cls)
            except TypeError:
                continue
    return LlmosError()


def typed_error(body: Any, status: int, headers: httpx.Headers | None = None) -> LlmosError:
    """The `LlmosError` an error body stands for (built without its class's own constructor)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _error_classes()
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": f"HTTP {status}: {str(body)[:300]}"}
    cls = _CLASSES.get(str(err.get("code")), LlmosError)
    exc = _bare(cls)
    exc.args = (str(err.get("message") or f"HTTP {status}"),)
    exc.param = err.get("param")  # type: ignore[attr-defined]
    exc.status = status  # type: ignore[attr-defined]
    if "missing" in err:
        exc.missing = frozenset(err["missing"])  # type: ignore[attr-defined]
    if headers is not None and headers.get("retry-after", "").isdigit():
        exc.retry_after = float(headers["retry-after"])  # type: ignore[attr-defined]
    return exc


def q(name: str) -> str:
    """`name` as one path segment."""
    return quote(str(name), safe="")


def client_label() -> str:
    """This program as `ps` names it: "llmos run pid 4242", "llmos shell pid 99", "script.py pid 7"."""
    argv = sys.argv or [""]
    name = os.path.basename(argv[0])
    if name in ("llmos", "__main__.py"):
        name = "llmos" + (f" {argv[1]}" if len(argv) > 1 and not argv[1].startswith("-") else "")
    elif not name or name == "-c":
        name = "python"
    return f"{name[:40]} pid {os.getpid()}"


class Transport:
    """One httpx connection pool to a server: `socket` (a Unix socket path) or `url` (http://...)."""

    def __init__(self, *, socket: str | None = None, url: str | None = None, api_key: str | None = None) -> None:
        headers = {"X-Llmos-Client": client_label()}  # shown by `ps`; display text only
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        if socket is not None:
            self.where = socket
            self.http = httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://localhost",
                                     headers=headers, timeout=timeout)
        else:
            self.where = str(url).rstrip("/")
            self.http = httpx.Client(base_url=self.where, headers=headers, timeout=timeout)

    def gone(self, exc: Exception) -> DaemonNotRunningError:
        if isinstance(exc, httpx.ReadTimeout):
            return DaemonNotRunningError(f"the llmos kernel at {self.where} sent nothing for {STREAM_IDLE_S:g} s (not "
                                         f"even a keep-alive): it is hung or overloaded; `llmos logs` shows why")
        return DaemonNotRunningError(f"the llmos kernel at {self.where} does not answer ({type(exc).__name__}: "
                                     f"{exc}): `llmos status` says whether it runs, `llmos up` starts it")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one request; a typed error for an error answer."""
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self.gone(exc) from None
        return self._json(r)

    def _json(self, r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            body = r.text
        if r.status_code >= 400:
            raise typed_error(body, r.status_code, r.headers)
        return body

    def open(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An open streaming response, status checked: an error answer raises before anything is read.
        The caller closes it (no generator holds it: see OpenStream)."""
        try:
            r = self.http.send(self.http.build_request(method, path, timeout=httpx.Timeout(
                STREAM_IDLE_S, connect=CONNECT_TIMEOUT_S), **kwargs), stream=True)
            if r.status_code >= 400:
                try:
                    r.read()
                finally:
                    r.close()
        except httpx.HTTPError as exc:
            raise self.gone(exc) from None
        if r.status_code >= 400:
            self._json(r)
        return r

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """`open` for a `with` block read to its end in one go."""
        r = self.open(method, path, **kwargs)
        try:
            yield r
        except httpx.HTTPError as exc:
            raise self.gone(exc) from None
        finally:
            r.close()

    def close(self) -> None:
        self.http.close()


class OpenStream:
    """A streaming answer, closed exactly once: by `objects()` when the stream ends, fails or its reader
    is dropped, or by `close()`. Readers must not sit in reference cycles (see handles._read): httpcore
    closes a connection under its pool's lock, and a garbage collection can run inside that lock."""

    def __init__(self, transport: "Transport", method: str, path: str, **kwargs: Any) -> None:
        self._transport = transport
        self.response = transport.open(method, path, **kwargs)  # raises the typed error of a refused request
        self._closed = False

    def objects(self) -> Iterator[dict[str, Any]]:
        """The JSON objects of the stream's `data:` lines; a dropped connection is a typed error."""
        try:
            yield from events(self.response)
        except httpx.HTTPError as exc:
            raise self._transport.gone(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.response.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


def events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON objects of an SSE stream's `data:` lines, up to `[DONE]` or its end."""
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return
        yield json.loads(data)
