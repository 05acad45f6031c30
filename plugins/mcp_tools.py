"""Tools from Model Context Protocol servers (stdio), through the `mcp` SDK.

Configured in llmos.toml:

    [mcp.servers.files]
    command = "python"
    args = ["-m", "my_mcp_server"]
    env = { API_TOKEN = "..." }        # optional

A server starts on demand (the first time tools are listed), on a background asyncio loop; its tools
appear as `<server>.<tool>` with capability `mcp:<server>`. A server that fails to start, or exits
later, is reported in `errors` and its tools disappear; nothing else is affected. It is started
again on demand after a pause (`RESTART_AFTER_S` after an exit, `RETRY_START_S` after a failed start).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

from llmos.kernel.tools.tools import Tool

log = logging.getLogger("llmos.mcp")
START_TIMEOUT_S = 30.0
RESTART_AFTER_S = 1.0
RETRY_START_S = 30.0


class _Server:
    def __init__(self, name: str, session, tools: list, stop: asyncio.Event) -> None:
        self.name, self.session, self.tools, self.stop = name, session, tools, stop
        self.task: asyncio.Task | None = None


class McpTools:
    def __init__(self, section: dict[str, Any]) -> None:
        self.config: dict[str, dict[str, Any]] = dict(section.get("servers", {}))
        self.errors: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}  # a server that is down is started again from then on
        self._servers: dict[str, _Server] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _run(self, coro, timeout: float):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="llmos-mcp", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, name: str, cfg: dict[str, Any]) -> _Server:
        if not isinstance(cfg.get("command"), str):
            raise ValueError(f"[mcp.servers.{name}] needs command = \"...\"")
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._serve(name, cfg, ready))
        try:
            server = await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT_S)
        except BaseException:
            task.cancel()  # never leave a half-started server process behind
            raise
        server.task = task
        return server

    async def _serve(self, name: str, cfg: dict[str, Any], ready: asyncio.Future) -> None:
        """One task per server: it owns the stdio transport and session for the server's whole life."""
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=cfg["command"], args=list(cfg.get("args", [])), env=cfg.get("env"))
        stop = asyncio.Event()
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                ready.set_result(_Server(name, session, tools, stop))
                await stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported through errors / the ready future
            if not ready.done():
                ready.set_exception(exc)
            else:
                self._servers.pop(name, None)
                self._down(name, f"exited: {type(exc).__name__}: {exc}", RESTART_AFTER_S)

    def tools(self) -> dict[str, Tool]:
        """Tools of every configured server, starting servers not started yet."""
        with self._lock:
            for name, cfg in self.config.items():
                if name in self._servers or time.monotonic() < self._retry_at.get(name, 0.0):
                    continue
                try:
                    self._servers[name] = self._run(self._start(name, cfg), START_TIMEOUT_S)
                    self.errors.pop(name, None)
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    log.warning("MCP server %s failed to start: %s", name, exc)
                    self._down(name, f"failed to start: {type(exc).__name__}: {exc}", RETRY_START_S)
            out = {}
            for server in self._servers.values():
                for t in server.tools:
                    full = f"{server.name}.{t.name}"
                    out[full] = Tool(full, _caller(self, server.name, t.name), t.description or "",
                                     dict(getattr(t, "input_schema", None) or getattr(t, "inputSchema", None)
                                          or {"type": "object", "properties": {}}),
                                     frozenset({f"mcp:{server.name}"}), f"mcp:{server.name}", None)
            return out

    def call(self, server: str, tool: str, args: dict[str, Any], timeout: float = 60.0) -> Any:
        entry = self._servers.get(server)
        if entry is None:
            raise RuntimeError(f"MCP server {server} is not running ({self.errors.get(server, 'not started')})")
        future = asyncio.run_coroutine_threadsafe(entry.session.call_tool(tool, args), self._loop)
        try:
            result = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # slow, not dead: the server stays
            raise RuntimeError(f"MCP server {server}: {tool} timed out after {timeout:g}s") from None
        except Exception as exc:
            self._forget(server, f"exited or failed: {type(exc).__name__}: {exc}")
            raise RuntimeError(f"MCP server {server} failed during {tool}: {exc}") from exc
        text = "\n".join(getattr(c, "text", "") for c in getattr(result, "content", []) or [])
        if getattr(result, "isError", False) or getattr(result, "is_error", False):
            raise RuntimeError(text or f"{server}.{tool} reported an error")
        structured = getattr(result, "structuredContent", None) or getattr(result, "structured_content", None)
        return structured if structured is not None else text

    def _down(self, server: str, why: str, pause: float) -> None:
        self.errors[server] = why
        self._retry_at[server] = time.monotonic() + pause

    def _forget(self, server: str, why: str) -> None:
        with self._lock:
            entry = self._servers.pop(server, None)
            self._down(server, why, RESTART_AFTER_S)
        if entry is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(entry.stop.set)

    def close(self) -> None:
        """Stop every server (their transports close and the child processes exit), then the loop."""
        if self._loop is None:
            return
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}

        async def shutdown() -> None:
            for server in servers:
                server.stop.set()
            tasks = [s.task for s in servers if s.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=10)

        try:
            self._run(shutdown(), 15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


def _caller(owner: McpTools, server: str, tool: str):
    def call(**kwargs: Any) -> Any:
        return owner.call(server, tool, kwargs)
    call.__name__ = f"{server}.{tool}"
    return call
