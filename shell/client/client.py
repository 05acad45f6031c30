"""`Client`: a served kernel (the resident one, `llmos up`, or any `llmos serve`) with the `Kernel`
surface programs use, over the HTTP API. `llmos.connect()` makes one.

Boundaries: everything crosses the wire through the documented routes (OpenAI's /v1/... plus /llmos/...),
no second protocol; what the kernel would refuse is checked here first with the kernel's own checks
(`parse_sampling`, `check_input`), so a bad call raises the same typed error, with the same message,
in both modes. `shutdown()` closes this client's connections and leaves the resident kernel running.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Sequence

from llmos.kernel.errors import InvalidRequestError, ProcessNotFoundError
from llmos.kernel.sched.completion import Completion
from llmos.kernel.sched.request import check_input, check_rag_k, parse_sampling

from ..server.sse import MAX_STREAM_INTERVAL_MS
from .handles import RemoteHandle, RemoteProcess
from .transport import Transport, q
from .views import ClientConfig, RemoteMem, RemoteModuleStore, RemoteRegistry, RemoteSessions, RemoteTools, manifest

if TYPE_CHECKING:  # imported when used: a client starts light
    from llmos.kernel.modules.store import Manifest
    from llmos.kernel.tools.tools import ToolResult


class Client:
    def __init__(self, transport: Transport, *, client_version: str | None = None,
                 stream_interval_ms: int | None = None) -> None:
        from ..daemon import check_version

        if stream_interval_ms is not None and (type(stream_interval_ms) is not int  # a bool is no integer here
                                               or not 0 <= stream_interval_ms <= MAX_STREAM_INTERVAL_MS):
            transport.close()
            raise InvalidRequestError(f"stream_interval_ms must be an integer from 0 to {MAX_STREAM_INTERVAL_MS} "
                                      f"(milliseconds), not {stream_interval_ms!r}", param="stream_interval_ms")
        self._t = transport
        self.stream_interval_ms = stream_interval_ms  # the cadence its streams are asked at (None: per token)
        self.where = transport.where
        health = transport.call("GET", "/health")
        check_version(str(health.get("version")), client_version)
        self.version = health.get("version")
        self.config = ClientConfig(**transport.call("GET", "/llmos/config"))
        self.registry = RemoteRegistry(transport)
        self.tools = RemoteTools(transport)
        self.module_store = RemoteModuleStore(transport)
        self.mem = RemoteMem(transport)
        self.sessions = RemoteSessions(transport)

    # -- models ------------------------------------------------------------------------------------

    def models_info(self) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/models")

    def models(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(**row) for row in self.models_info()]

    def load(self, model: str | None = None, *, driver: str | None = None) -> dict[str, Any]:
        """Load a model in the resident kernel now (it stays loaded its keep_alive)."""
        return self._t.call("POST", "/llmos/models/load", json={"model": model, "driver": driver})

    # -- requests ----------------------------------------------------------------------------------

    def submit(self, prompt: str | None = None, *, messages: Sequence[dict[str, Any]] | None = None,
               model: str | None = None, driver: str | None = None, adapter: str | None = None,
               rag: str | None = None, rag_k: int = 6, priority: Any = None, owner: str = "api",
               timeout: float | None = None, keep_alive: float | str | None = None, session: str | None = None,
               **sampling: Any) -> RemoteHandle:
        """Queue a request in the resident kernel and return its handle at once (`Kernel.submit`)."""
        params = parse_sampling(sampling)  # the kernel's own checks, so a bad call fails the same way here
        check_input(prompt, messages, timeout)
        check_rag_k(rag_k)
        if adapter is not None and model is None:  # the adapter's base model, as the kernel picks it
            model = self.module_store.base_of(adapter)
        name = model or self.config.default_model
        body: dict[str, Any] = {"model": f"{name}:{adapter}" if adapter else name, "user": owner}
        body.update({k: v for k, v in sampling.items() if k != "json_schema" and v is not None})
        if "stop" in body:
            body["stop"] = list(body["stop"])
        rag_body = rag if rag is None or rag_k == 6 else {"path": rag, "k": rag_k}
        body.update({k: v for k, v in (("driver", driver), ("rag", rag_body), ("timeout", timeout),
                                       ("keep_alive", keep_alive), ("session", session),
                                       ("stream_interval_ms", self.stream_interval_ms)) if v is not None})
        if priority is not None:
            body["priority"] = priority.name.lower() if hasattr(priority, "name") else priority
        if params.json_schema is not None:
            if messages is None:
                raise InvalidRequestError("json_schema needs chat messages over the HTTP API", param="json_schema")
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output",
                                                                              "schema": params.json_schema}}
        if messages is not None:
            body["messages"] = [dict(m) for m in messages]
            return RemoteHandle(self._t, "/v1/chat/completions", body, name)
        return RemoteHandle(self._t, "/v1/completions", {**body, "prompt": prompt}, name)

    def generate(self, prompt: str, **kwargs: Any) -> Completion:
        return self.submit(prompt, **kwargs).result()

    def chat(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> Completion:
        return self.submit(messages=messages, **kwargs).result()

    def stream(self, prompt: str | None = None, **kwargs: Any) -> Iterator[str]:
        """Text deltas; closing the iterator early cancels the request."""
        handle = self.submit(prompt, **kwargs)
        try:
            yield from handle.stream()
        finally:
            handle.cancel()

    async def agenerate(self, prompt: str, **kwargs: Any) -> Completion:
        return await self.submit(prompt, **kwargs).aresult()

    async def achat(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> Completion:
        return await self.submit(messages=messages, **kwargs).aresult()

    async def astream(self, prompt: str | None = None, **kwargs: Any) -> AsyncIterator[str]:
        handle = self.submit(prompt, **kwargs)
        try:
            async for chunk in handle.astream():
                yield chunk
        finally:
            handle.cancel()

    def cancel(self, request_id: str) -> bool:
        """Cancel a request or kill an agent by id; False if it is unknown or already finished."""
        try:
            self._t.call("POST", f"/llmos/kill/{q(request_id)}")
        except ProcessNotFoundError:
            return False
        return True

    # -- agents ------------------------------------------------------------------------------------

    def spawn(self, goal: str | None = None, *, tools: list[str] | None = None, approve: Callable | None = None,
              owner: str = "agent", detach: bool = False, **options: Any) -> RemoteProcess:
        """Start an agent in the resident kernel (`Kernel.spawn`); `tools=None` means every tool. With
        `approve`, its approval questions are asked through that callback while its events are read."""
        if tools is None:
            tools = list(self.tools.all())
        if "priority" in options and hasattr(options["priority"], "name"):
            options["priority"] = options["priority"].name.lower()
        row = self._t.call("POST", "/llmos/agents", json={"goal": goal, "tools": tools, "owner": owner,
                                                         "approvals": approve is not None, "detach": detach,
                                                         **options})
        return RemoteProcess(self._t, row["pid"], row["session"], approve, token=row.get("token"))

    # -- modules -----------------------------------------------------------------------------------

    def insmod(self, name: str, *, driver: str | None = None) -> dict[str, Any]:
        return self._t.call("POST", f"/llmos/modules/{q(name)}/load", params={"driver": driver} if driver else None)

    def rmmod(self, name: str, *, force: bool = False) -> list[str]:
        return self._t.call("POST", f"/llmos/modules/{q(name)}/unload", params={"force": force})["cancelled"]

    def lsmod(self) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/lsmod")

    def modules_info(self) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/modules")

    def install_module(self, path: str, *, name: str | None = None, base: str | None = None) -> Manifest:
        from pathlib import Path

        return manifest(self._t.call("POST", "/llmos/admin/modules/install",
                                      json={"path": str(Path(path).resolve()), "name": name, "base": base}))

    def export_module(self, name: str, fmt: str = "gguf") -> Manifest:
        return manifest(self._t.call("POST", f"/llmos/admin/modules/{q(name)}/export", params={"format": fmt}))

    # -- tools, tasks, plugins -----------------------------------------------------------------------

    def call_tool(self, name: str, args: Any, *, owner: str = "api", approve: Callable | None = None,
                  timeout: float = 30.0) -> ToolResult:
        """Call a tool in the resident kernel; a capability not granted is asked of `approve` here."""
        from llmos.kernel.tools.capabilities import ToolDeniedError
        from llmos.kernel.tools.tools import ToolResult

        body = {"args": args, "owner": owner, "timeout": timeout}
        try:
            row = self._t.call("POST", f"/llmos/tools/{q(name)}/call", json=body)
        except ToolDeniedError as exc:
            answer = approve(name, getattr(exc, "missing", frozenset())) if approve is not None else "deny"
            if answer not in ("once", "always"):
                raise
            row = self._t.call("POST", f"/llmos/tools/{q(name)}/call", json={**body, "approve": answer})
        return ToolResult(row["ok"], row.get("value"), row.get("error"), row.get("duration_s", 0.0), row.get("code"))

    def run_task(self, name: str, params: Any) -> Any:
        return self._t.call("POST", f"/llmos/tasks/{q(name)}/run", json=params)["result"]

    def plugins_info(self) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/plugins")

    # -- introspection, lifecycle --------------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/ps")

    def engines(self) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/engines")

    def tenants_info(self) -> list[dict[str, Any]]:
        """Per tenant limits and usage (`Kernel.tenants_info`; a non-admin key sees its own row)."""
        return self._t.call("GET", "/llmos/tenants")

    def tokenize(self, text: str, *, model: str | None = None) -> list[int]:
        """`text` as `model`'s token ids (`Kernel.tokenize`)."""
        return self._t.call("POST", "/llmos/tokenize", json={"model": model or self.config.default_model,
                                                              "text": text})["tokens"]

    def alerts(self) -> dict[str, Any]:
        """The [alerts] rules' states and the alerts resolved recently (`Kernel.alerts`; admin only)."""
        return self._t.call("GET", "/llmos/alerts")

    def status(self) -> dict[str, Any]:
        """The resident kernel's state (`llmos status`)."""
        return self._t.call("GET", "/llmos/status")

    def shutdown(self) -> None:
        """Close this client's connections (the resident kernel keeps running: `llmos down` stops it)."""
        self._t.close()

    close = shutdown

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<llmos.Client {self.where} llmos {self.version}>"
