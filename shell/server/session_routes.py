"""Sessions over HTTP (`/llmos/sessions`): list, show, export, delete, open (create or resume), append a
message, change settings. The same store (`kernel.sessions`) the in-process shell and CLI use, so a
`Client`'s `sessions` behaves like the kernel's (shell/client/sessions.py)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llmos.kernel.errors import InvalidRequestError

from .security import is_owner, tenant_of
from .tenancy import own_session, require_admin, visible


class SessionOpen(BaseModel):
    name: str | None = Field(None, max_length=200, description="Name or id; a new chat session when unknown or null.")
    model: str | None = None
    adapter: str | None = None
    system: str | None = Field(None, max_length=100_000)


class SessionMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # what a session stores, nothing else
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = Field(None, max_length=1_000_000)
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=200)


class SessionUpdate(BaseModel):
    model_config = ConfigDict(extra="allow")  # the store names the unknown settings in its 400


def session_router(kernel) -> APIRouter:
    r = APIRouter(prefix="/llmos")
    run = asyncio.to_thread  # the store is SQLite: keep the event loop free

    @r.get("/sessions")
    async def sessions(request: Request, kind: str | None = None) -> list[dict[str, Any]]:
        return visible(request, await run(kernel.sessions.list, kind))

    def own(request: Request, session: str, action: str):
        return own_session(kernel, request, session, action)

    def name_taken(request: Request, found) -> None:
        """Opening a name another tenant's session has: refused without saying whose, or its id."""
        tenant = tenant_of(request)
        if not tenant.admin and found.owner != tenant.name:
            kernel.tenants.deny(tenant, "open", f"session {found.name}", "another tenant's session name")
            raise InvalidRequestError(f"the session name {found.name!r} is taken: choose another", param="name")

    def served_name(request: Request, model: Any) -> None:
        """A session's model over HTTP: a served name, never a path on this machine (but the owner's)."""
        if model is not None:
            kernel.registry.resolve(model, allow_paths=is_owner(request))

    @r.post("/sessions")
    async def session_open(request: Request, body: SessionOpen) -> dict[str, Any]:
        def open_() -> dict[str, Any]:
            served_name(request, body.model)
            s = kernel.sessions.open(body.name, model=body.model, adapter=body.adapter, system=body.system,
                                     owner=tenant_of(request).name,
                                     check=lambda found: name_taken(request, found))
            return s.as_dict()
        return await run(open_)

    @r.get("/sessions/{session}")
    async def session_show(request: Request, session: str, format: str | None = None) -> Any:  # noqa: A002
        stored = await run(own, request, session, "read")
        if format is None:
            return stored.as_dict()
        return {"session": session, "format": format, "text": await run(kernel.sessions.export, stored.id, format)}

    @r.post("/sessions/{session}/messages")
    async def session_append(request: Request, session: str, body: SessionMessage) -> dict[str, Any]:
        def append() -> dict[str, Any]:
            stored = own(request, session, "write")
            stored.append(body.model_dump(exclude_none=True))
            return {"session": stored.id, "appended": 1}
        return await run(append)

    @r.patch("/sessions/{session}")
    async def session_update(request: Request, session: str, body: SessionUpdate) -> dict[str, Any]:
        def update() -> dict[str, Any]:
            settings = body.model_dump()
            served_name(request, settings.get("model"))
            stored = own(request, session, "change")
            if "state" in settings:  # the kernel's bookkeeping ("running" sessions are never pruned)
                require_admin(kernel, request, "setting a session's state", f"session {session}")
            stored.update(**settings)
            return stored.as_dict()
        return await run(update)

    @r.delete("/sessions/{session}")
    async def session_rm(request: Request, session: str) -> dict[str, Any]:
        stored = await run(own, request, session, "delete")
        await run(kernel.sessions.delete, stored.id)
        return {"deleted": session}

    return r
