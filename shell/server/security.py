"""What a client meets before any endpoint runs: Host, Origin, API key, body size, slow connections.

- Host: a server without an API key answers only requests whose Host is a loopback name (`localhost`,
  `*.localhost`, `127.x.x.x`, `[::1]`) or one of `allowed_hosts`. A web page that rebinds its own DNS
  name to 127.0.0.1 sends that name as Host, and is refused.
- Origin: a request from a web page (it carries an Origin header) is refused unless the origin is in
  `allowed_origins` ("*": any) or is the server's own (the same authority as Host). CORS headers are
  added (app.py, inside this guard) only for allowed origins; by default there are none.
- API key: with `--api-key` or any stored key (`llmos keys add`, kernel/tenants/keys.py), every path
  but /health (and /metrics with `public_metrics`) needs `Authorization: Bearer KEY` (but a CORS
  preflight of an allowed origin, which never carries one). The path compared is the ASGI scope's (the
  one routing uses), never one rebuilt from Host.
- Tenant: every request gets one on `request.state.tenant` (`tenant_of`): the stored key's tenant, the
  admin tenant for `--api-key`, the owner (admin) over the Unix socket without a key, and `anonymous`
  (no rights beyond its own things) on a server that needs no key. Never from anything else the client
  sends: OpenAI's `user` is a label.
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
  key refuses them on TCP (403), and only an admin tenant passes them; a server with an owner socket
  (the resident kernel) and no key keeps all of /llmos/ to that socket. Endpoints ask `is_owner`
  (model paths are the owner's only) and `is_trusted` (an admin tenant: named drivers, approvals).
Every refusal is a 4xx in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos.kernel.errors import LlmosError
from llmos.kernel.tenants.keys import KeyStore
from llmos.kernel.tenants.tenant import ADMIN_TENANT, ANONYMOUS_TENANT, OWNER_TENANT, Tenant

from .errors import json_error

MAX_BODY_BYTES = 4 << 20
HEADER_TIMEOUT_S = 10.0
#: served only to the owner (Unix socket) or with the API key
OWNER_PATHS = frozenset({"/llmos/status", "/llmos/shutdown", "/llmos/alerts"})
OWNER_PREFIXES = ("/llmos/admin/", "/llmos/tools/", "/llmos/tasks/")
# /metrics too, once keys exist (every tenant's usage is in it), unless --public-metrics


def tenant_of(request) -> Tenant:
    """The request's tenant (set by Guard from its key or its socket)."""
    return getattr(request.state, "tenant", ANONYMOUS_TENANT)


def is_owner(request) -> bool:
    """The machine's owner: over the Unix socket, without a key."""
    return tenant_of(request) is OWNER_TENANT


def is_trusted(request) -> bool:
    """An admin tenant (the owner, the --api-key holder, or a key made with --admin)."""
    return tenant_of(request).admin


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
                 read_timeout: float = HEADER_TIMEOUT_S, owner_socket: str | None = None,
                 keys: KeyStore | None = None, on_deny: Callable[[Tenant, str, str, str], None] | None = None) -> None:
        self.app = app
        self.keys = keys
        self._keyed = False  # once clients needed a key, they always do (until a restart)
        self.on_deny = on_deny or (lambda *_args: None)  # (tenant, action, target, reason): the audit log
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
        headers = Headers(scope=scope)
        try:
            tenant = self._tenant(scope, headers)
        except LlmosError as exc:  # keys.json unreadable: refuse everyone (never guess who a client is)
            await json_error(503, str(exc), "server_error", None, exc.code)(scope, receive, send)
            return
        scope.setdefault("state", {})["tenant"] = tenant  # request.state.tenant in endpoints
        refusal = self._refusal(scope, headers, tenant)
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

    def keyed(self) -> bool:
        """Clients over TCP need a key: there is an --api-key or a stored key, or there was one since this
        server started (removing the last key, or keys.json, must not open a server listening on a public
        address to anyone: it refuses every TCP client until it is restarted without keys)."""
        now = bool(self.api_key) or bool(self.keys)  # an unreadable keys file raises here: a 503 for all
        self._keyed = self._keyed or now
        return self._keyed

    def _tenant(self, scope: Scope, headers: Headers) -> Tenant | None:
        """Who the request is: its key's tenant, the owner on the socket, anonymous where no key is
        needed; None for a wrong or missing key where one is."""
        given = headers.get("authorization", "")
        key = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if key:
            if self.api_key and secrets.compare_digest(key.encode(), self.api_key.encode()):
                return ADMIN_TENANT
            tenant = self.keys.lookup(key) if self.keys is not None else None
            if tenant is not None:
                return tenant
        if self.is_owner(scope):
            return OWNER_TENANT
        return None if self.keyed() else ANONYMOUS_TENANT

    def _refusal(self, scope: Scope, headers: Headers, tenant: Tenant | None) -> Response | None:
        host = headers.get("host")
        owner = self.is_owner(scope)
        keyed = self.keyed()
        path = scope["path"]
        if not owner and not keyed and (owner_only(path) or self._llmos_of_daemon(path)):
            return json_error(403, f"{path} is served over the Unix socket only, or over TCP with an API key",
                              "permission_error", None, "owner_only")
        if not owner and not keyed and host is not None:
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
        if tenant is None and path not in self.open_paths and not preflight:
            return json_error(401, "missing or wrong API key: send Authorization: Bearer <key>",
                              "invalid_request_error", None, "invalid_api_key")
        if tenant is not None and not tenant.admin and (owner_only(path) or (path == "/metrics" and keyed and
                                                                           path not in self.open_paths)):
            self.on_deny(tenant, "http", path, "needs an admin key")
            return json_error(403, f"{path} needs an admin key (tenant {tenant.name!r} is not an admin)",
                              "permission_error", None, "admin_only")
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
