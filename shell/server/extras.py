"""llmos-specific endpoints under /llmos/: processes, agents, sessions, modules and memfs of the served kernel.

Agents spawned over HTTP are bounded: at most `max_agents` running at once (429), budgets capped (400),
and only the tools the request names (none if it names none)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmos.kernel.errors import InvalidRequestError, LlmosError, QueueFullError

#: agents an HTTP client may have running at once, and each one's budgets
MAX_AGENTS = 8
MAX_AGENT_STEPS = 32
MAX_AGENT_TOKENS = 8192


class TooManyAgentsError(QueueFullError):
    """HTTP clients have `limit` agents running already (429, like a full queue)."""

    def __init__(self, limit: int) -> None:
        LlmosError.__init__(self, f"{limit} agents are already running: wait for one to finish, or kill one "
                                  f"(POST /llmos/kill/<pid>)")
        self.limit, self.retry_after = limit, 5.0


class MemWrite(BaseModel):
    path: str
    text: str
    tags: list[str] = Field(default_factory=list)


class AgentSpawn(BaseModel):
    goal: str
    tools: list[str] = Field(default_factory=list, max_length=64)  # over HTTP: only the tools named
    model: str | None = None
    max_steps: int = Field(8, ge=1, le=MAX_AGENT_STEPS)
    max_tokens: int = Field(2048, ge=16, le=MAX_AGENT_TOKENS)
    session: str | None = None


class MemFind(BaseModel):
    query: str
    within: str = "/"
    k: int = 5


def extras_router(kernel, *, max_agents: int = MAX_AGENTS) -> APIRouter:
    r = APIRouter(prefix="/llmos")
    run = asyncio.to_thread  # the kernel API blocks: keep the event loop free
    spawning = threading.Lock()  # the count of running agents and a spawn, together

    @r.get("/ps")
    async def ps() -> list[dict[str, Any]]:
        return kernel.ps()

    @r.get("/engines")
    async def engines() -> list[dict[str, Any]]:
        return kernel.engines()

    @r.post("/kill/{request_id}")
    async def kill(request_id: str) -> dict[str, Any]:
        if not kernel.cancel(request_id):
            raise InvalidRequestError(f"no running request {request_id!r}", param="request_id")
        return {"killed": request_id}

    @r.get("/sessions")
    async def sessions(kind: str | None = None) -> list[dict[str, Any]]:
        return await run(kernel.sessions.list, kind)

    @r.get("/sessions/{session}")
    async def session_show(session: str, format: str | None = None) -> Any:  # noqa: A002 - the query name
        if format is None:
            return (await run(kernel.sessions.get, session)).as_dict()
        return {"session": session, "format": format, "text": await run(kernel.sessions.export, session, format)}

    @r.delete("/sessions/{session}")
    async def session_rm(session: str) -> dict[str, Any]:
        await run(kernel.sessions.delete, session)
        return {"deleted": session}

    @r.post("/agents")
    async def agent_spawn(body: AgentSpawn) -> dict[str, Any]:
        def spawn():
            if body.model is not None:  # a served name, never a path on this machine
                kernel.registry.resolve(body.model, allow_paths=False)
            with spawning:
                if sum(p.owner == "api" and not p.state.finished for p in kernel.processes.list()) >= max_agents:
                    raise TooManyAgentsError(max_agents)
                return kernel.spawn(body.goal, tools=body.tools, model=body.model, max_steps=body.max_steps,
                                    max_tokens=body.max_tokens, session=body.session, owner="api")

        proc = await run(spawn)
        return {"pid": proc.pid, "session": proc.session_id}

    @r.get("/agents/{pid}")
    async def agent_show(pid: str) -> dict[str, Any]:
        proc = kernel.processes.get(pid)
        if proc is None:
            raise InvalidRequestError(f"no agent {pid!r} (finished agents are listed for a minute; their sessions "
                                      f"stay under /llmos/sessions)", param="pid")
        events = [{"kind": e.kind, "step": e.step, "text": e.text, **e.data} for e in proc.history()
                  if e.kind != "token"]
        return {**proc.as_row(), "answer": proc.answer, "error": proc.error, "events": events}

    @r.get("/modules")
    async def modules() -> list[dict[str, Any]]:
        return await run(kernel.modules_info)

    @r.post("/modules/{name}/load")
    async def insmod(name: str) -> dict[str, Any]:
        return await run(kernel.insmod, name)

    @r.post("/modules/{name}/unload")
    async def rmmod(name: str, force: bool = False) -> dict[str, Any]:
        return {"unloaded": name, "cancelled": await run(kernel.rmmod, name, force=force)}

    @r.get("/mem/ls")
    async def mem_ls(path: str = "/", recursive: bool = False) -> list[dict[str, Any]]:
        return await run(kernel.mem.ls, path, recursive)

    @r.get("/mem/cat")
    async def mem_cat(path: str) -> dict[str, Any]:
        return {"path": path, "text": await run(kernel.mem.cat, path)}

    @r.put("/mem/write")
    async def mem_write(body: MemWrite) -> dict[str, Any]:
        return await run(kernel.mem.write, body.path, body.text, tags=body.tags)

    @r.post("/mem/find")
    async def mem_find(body: MemFind) -> list[dict[str, Any]]:
        return await run(kernel.mem.find, body.query, body.within, body.k)

    return r
