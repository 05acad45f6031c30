"""What a client meets before any endpoint runs: Host, Origin, API key, body size, slow connections.

- Host: a server without an API key answers only requests whose Host is a loopback name (`localhost`,
  `*.localhost`, `127.x.x.x`, `[::1]`) or one of `allowed_hosts`. A web page that rebinds its own DNS
  name to 127.0.0.1 sends that name as Host, and is refused.
- Origin: a request from a web page (it carries an Origin header) is refused unless the origin is in
  `allowed_origins` ("*": any) or is the server's own (the same authority as Host). CORS headers are
  added (app.py, inside this guard) only for allowed origins; by default there are none.
- API key: every path but /health (and /metrics with `public_metrics`) needs `Authorization: Bearer
  KEY` (but a CORS preflight of an allowed origin, which never carries one). The path compared is
  the ASGI scope's (the one routing uses), never one rebuilt from Host.
- Body: at most `max_body` bytes, counted on the stream (chunked bodies too, not only Content-Length);
  a body that sends nothing for `read_timeout` seconds is refused with 408.
- Connections (`guarded_h11`): a connection whose request head is not complete `header_timeout`
  seconds after it started is closed, so idle or half-sent connections cannot pile up.
- Owner: a request that came over the server's own Unix socket (`owner_socket`, mode 0600: only the
  machine owner can connect) is the owner's, and needs no key and no Host check. This is read from
  the ASGI scope's `server` entry, which uvicorn fills from the accepting socket's getsockname(): a
  Unix socket gives `(path, None)`, a TCP socket always `(address, port)`, whatever the client sends
  (headers, Host, proxy headers never touch it). `OWNER_PATHS` (status, shutdown) and the paths under
  `OWNER_PREFIXES` (tool calls, task runs, and /llmos/admin/: what reads or writes files on this
  machine by path) are served only to the owner or, over TCP, with the API key: a server without a
  key refuses them on TCP (403); a server with an owner socket (the resident kernel) and no key keeps
  all of /llmos/ to that socket. Endpoints read `request.state.owner` (e.g. model paths are the
  owner's only) and `request.state.trusted` (the owner or an API key holder: e.g. priorities above
  normal, agents that ask approvals).
Every refusal is a 4xx in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import json_error

MAX_BODY_BYTES = 4 << 20
HEADER_TIMEOUT_S = 10.0
#: served only to the owner (Unix socket) or with the API key
OWNER_PATHS = frozenset({"/llmos/status", "/llmos/shutdown"})
OWNER_PREFIXES = ("/llmos/admin/", "/llmos/tools/", "/llmos/tasks/")


def is_owner(request) -> bool:
    """The request came over the owner's Unix socket (set by Guard on the scope's state)."""
    return bool(getattr(request.state, "owner", False))


def is_trusted(request) -> bool:
    """The owner, or an API key holder."""
    return bool(getattr(request.state, "trusted", False))


def owner_only(path: str) -> bool:
    return path in OWNER_PATHS or path.startswith(OWNER_PREFIXES)


def host_name(host: str) -> str:
    """The name part of a Host header value, lower-cased, without port or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1:host.index("]")] if "]" in host else host
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name.rstrip(".")


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):  # browsers resolve these to loopback themselves
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _origin(value: str) -> str:
    return value.strip().lower().rstrip("/")


class Guard:
    """ASGI middleware applying the rules of this module's docstring, in that order."""

    def __init__(self, app: ASGIApp, *, api_key: str | None = None, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = (), public_metrics: bool = False, max_body: int = MAX_BODY_BYTES,
                 read_timeout: float = HEADER_TIMEOUT_S, owner_socket: str | None = None) -> None:
        self.app = app
        self.owner_socket = owner_socket
        self.api_key = api_key
        self.hosts = {host_name(h) for h in allowed_hosts}
        self.origins = {_origin(o) for o in allowed_origins}
        self.open_paths = {"/health", "/metrics"} if public_metrics else {"/health"}
        self.max_body = max_body
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, Headers(scope=scope))
        state = scope.setdefault("state", {})  # request.state in endpoints:
        state["owner"] = self.is_owner(scope)  # over the Unix socket
        state["trusted"] = state["owner"] or bool(self.api_key)  # the owner, or (past the check) a key holder
        if refusal is None:
            body = await self._read_body(receive)
            if body is None:  # the client went away before sending its body
                return
            if isinstance(body, bytes):
                await self.app(scope, _replay(body, receive), send)
                return
            refusal = body
        await refusal(scope, receive, send)

    def is_owner(self, scope: Scope) -> bool:
        """The request came over `owner_socket` (never true over TCP: see the module docstring)."""
        server = scope.get("server")
        return self.owner_socket is not None and isinstance(server, (tuple, list)) and len(server) == 2 \
            and server[1] is None and server[0] == self.owner_socket

    def _llmos_of_daemon(self, path: str) -> bool:
        """The resident kernel (it has an owner socket) keeps its own API, /llmos/, to its socket when it
        has no key: over keyless TCP any local user could list, kill or drive the owner's processes."""
        return self.owner_socket is not None and path.startswith("/llmos/")

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        host = headers.get("host")
        owner = self.is_owner(scope)
        if not owner and not self.api_key and (owner_only(scope["path"]) or self._llmos_of_daemon(scope["path"])):
            return json_error(403, f"{scope['path']} is served over the Unix socket only, or over TCP with an API key",
                              "permission_error", None, "owner_only")
        if not owner and not self.api_key and host is not None:
            name = host_name(host)
            if not is_loopback_name(name) and name not in self.hosts:
                return json_error(400, f"this server has no API key and answers loopback names only, not Host "
                                       f"{host[:100]!r}: add the name with --allowed-host, or serve with an API key",
                                  "invalid_request_error", None, "host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host):
            return json_error(403, f"requests from web pages (Origin {origin[:100]!r}) are refused: allow the "
                                   f"origin with --allow-origin", "permission_error", None, "origin_not_allowed")
        preflight = scope["method"] == "OPTIONS" and origin is not None and "access-control-request-method" in headers
        if self.api_key and not owner and scope["path"] not in self.open_paths and not preflight:
            given = headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return json_error(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                  "invalid_request_error", None, "invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return self._too_large()
        return None

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = _origin(origin)
        if origin in self.origins or "*" in self.origins:
            return True
        return host is not None and urlsplit(origin).netloc == host.strip().lower()  # the server's own page

    def _too_large(self) -> Response:
        return json_error(413, f"request body over {self.max_body} bytes", "invalid_request_error", None,
                          "body_too_large", headers={"Connection": "close"})

    async def _read_body(self, receive: Receive) -> bytes | Response | None:
        """The whole body, counted as it streams in; a refusal once it is too big or stalls."""
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                return json_error(408, f"the request body stalled for {self.read_timeout:g} s",
                                  "invalid_request_error", None, "request_timeout", headers={"Connection": "close"})
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the buffered body once, then the client's own messages (disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def guarded_h11(header_timeout: float = HEADER_TIMEOUT_S) -> type:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete within
    `header_timeout` seconds of the connection (or of the first byte after a response) starting.
    uvicorn itself has no such timer: a socket that sends nothing, or half a header, stays open."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:  # between requests: these bytes begin a head
                self._arm()
            super().data_received(data)
            if self.cycle is not cycle:  # a request head arrived
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
