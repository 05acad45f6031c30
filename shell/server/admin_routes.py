"""The rest of the kernel's surface over HTTP, for `Client`s (shell/client/): models, plugins, tools,
tasks, the audit log, loaded modules, and the module store.

A model *path* (rather than a served name) resolves and loads only for the owner (the Unix socket):
a remote client never names files on this machine. Tool calls and task runs (`/llmos/tools/`,
`/llmos/tasks/`) and what takes a path or changes the module store (`/llmos/admin/`) are the
owner's or an API key holder's (security.py OWNER_PREFIXES). A tool call that needs a capability
not granted is a 403 whose error lists `missing`; the client may ask its user and call again with
`approve` ("once" or "always"), which is how the attached shell's approval dialog works."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from .security import is_owner, tenant_of
from .tenancy import require_admin


class ModelLoad(BaseModel):
    model: str | None = None
    driver: str | None = None


class ToolCallBody(BaseModel):
    args: Any = Field(default_factory=dict)
    owner: str = Field("api", max_length=64)
    approve: Literal["once", "always"] | None = None
    timeout: float = Field(30.0, gt=0, le=600)


class ModuleInstall(BaseModel):
    path: str
    name: str | None = None
    base: str | None = None


def admin_router(kernel) -> APIRouter:
    r = APIRouter(prefix="/llmos")
    run = asyncio.to_thread  # the kernel API blocks (loads, disk): keep the event loop free

    @r.get("/config")
    async def config() -> dict[str, Any]:
        return {"default_model": kernel.config.default_model}

    @r.get("/models")
    async def models(request: Request) -> list[dict[str, Any]]:
        rows = await run(kernel.models_info)
        if tenant_of(request).admin:
            return rows
        return [{k: v for k, v in row.items() if k != "path"} for row in rows]  # no paths of this machine

    @r.get("/models/resolve")
    async def resolve(request: Request, name: str) -> dict[str, Any]:
        spec = await run(kernel.registry.resolve, name, allow_paths=is_owner(request))
        row = {"name": spec.name, "format": spec.format, "source": spec.source, "location": str(spec.location)}
        return row if tenant_of(request).admin else {k: v for k, v in row.items() if k != "location"}

    @r.post("/models/load")
    async def load(request: Request, body: ModelLoad) -> dict[str, Any]:
        if body.driver is not None:  # a second engine of the model, which every tenant's requests would share
            require_admin(kernel, request, "load a model on a named driver", body.driver)

        def load_() -> dict[str, Any]:
            name = body.model or kernel.config.default_model
            kernel.registry.resolve(name, allow_paths=is_owner(request))
            loaded = kernel.load(name, driver=body.driver)
            return {"model": loaded.spec.name, "driver": loaded.driver_name}
        return await run(load_)

    @r.get("/plugins")
    async def plugins() -> list[dict[str, Any]]:
        return await run(kernel.plugins_info)

    @r.get("/tools")
    async def tools() -> dict[str, Any]:
        def list_() -> dict[str, Any]:
            return {"tools": [t.as_dict() for t in kernel.tools.all().values()], "mcp_errors": kernel.tools.mcp.errors}
        return await run(list_)

    @r.get("/tasks")
    async def tasks() -> list[dict[str, Any]]:
        return [t.as_dict() for t in kernel.tools.tasks.values()]

    @r.post("/tools/{name}/call")
    async def tool_call(name: str, body: ToolCallBody) -> dict[str, Any]:
        approve = (lambda _tool, _missing: body.approve) if body.approve else None
        result = await run(kernel.call_tool, name, body.args, owner=body.owner, approve=approve, timeout=body.timeout)
        return result.as_dict()

    @r.post("/tasks/{name}/run")
    async def task_run(name: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"result": await run(kernel.run_task, name, params)}

    @r.get("/admin/audit")
    async def audit(limit: int = Query(50, ge=0)) -> list[dict[str, Any]]:
        return await run(kernel.tools.audit.read, limit)

    @r.get("/lsmod")
    async def lsmod() -> list[dict[str, Any]]:
        return await run(kernel.lsmod)

    @r.post("/admin/modules/install")
    async def install(body: ModuleInstall) -> dict[str, Any]:
        return (await run(kernel.install_module, body.path, name=body.name, base=body.base)).as_dict()

    @r.delete("/admin/modules/{name}")
    async def remove(name: str) -> dict[str, Any]:
        await run(kernel.module_store.remove, name)
        return {"removed": name}

    @r.post("/admin/modules/{name}/export")
    async def export(name: str, format: str = "gguf") -> dict[str, Any]:  # noqa: A002 - the query name
        return (await run(kernel.export_module, name, format)).as_dict()

    return r
