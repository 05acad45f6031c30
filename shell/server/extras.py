"""llmos-specific endpoints under /llmos/: processes, agents and modules of the served kernel (memfs,
sessions and the rest: mem_routes.py, session_routes.py, admin_routes.py).

Agents spawned over HTTP are bounded: at most `max_agents` running at once (429), budgets capped (400),
and only the tools the request names (none if it names none). Their events stream as SSE
(`GET /llmos/agents/PID/events`); an agent spawned with `approvals: true` asks its client before a
tool needs a capability not granted (an `approval` event; the client answers with
`POST /llmos/agents/PID/approve`, else it is denied after APPROVAL_TIMEOUT_S). An agent spawned
without `detach` is killed when an event stream of it disconnects before it ends: a dropped client
cancels its work."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from llmos.kernel.errors import InvalidRequestError, LlmosError, ProcessNotFoundError, QueueFullError

#: agents an HTTP client may have running at once, and each one's budgets
MAX_AGENTS = 8
MAX_AGENT_STEPS = 32
MAX_AGENT_TOKENS = 8192
#: seconds an agent waits for its client's answer to an approval question before it is denied
APPROVAL_TIMEOUT_S = 300.0
#: seconds between two looks at an agent's events while streaming them
EVENT_POLL_S = 0.05


class ApprovalsRefusedError(InvalidRequestError, PermissionError):
    code = "approvals_need_trust"


class TooManyAgentsError(QueueFullError):
    """HTTP clients have `limit` agents running already (429, like a full queue)."""

    def __init__(self, limit: int) -> None:
        LlmosError.__init__(self, f"{limit} agents are already running: wait for one to finish, or kill one "
                                  f"(POST /llmos/kill/<pid>)")
        self.limit, self.retry_after = limit, 5.0


class AgentSpawn(BaseModel):
    goal: str | None = None
    tools: list[str] = Field(default_factory=list, max_length=64)  # over HTTP: only the tools named
    model: str | None = None
    adapter: str | None = None
    max_steps: int = Field(8, ge=1, le=MAX_AGENT_STEPS)
    max_tokens: int = Field(2048, ge=16, le=MAX_AGENT_TOKENS)
    session: str | None = None
    owner: str = Field("api", min_length=1, max_length=64)
    priority: str = "normal"
    tool_choice: Literal["first", "auto"] = "first"
    approvals: bool = False
    detach: bool = False


class Approval(BaseModel):
    id: str
    answer: Literal["once", "always", "deny"]


class _Questions:
    """Approval questions waiting for their client's answer, by id."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[threading.Event, list[str]]] = {}
        self._lock = threading.Lock()

    def asker(self, holder: dict[str, Any]):
        def approve(tool: str, missing: frozenset[str]) -> str:
            qid = secrets.token_hex(8)
            done, box = threading.Event(), []
            with self._lock:
                self._waiting[qid] = (done, box)
            holder["proc"].post("approval", f"{tool} needs {', '.join(sorted(missing))}", id=qid, tool=tool,
                                missing=sorted(missing))
            done.wait(APPROVAL_TIMEOUT_S)
            with self._lock:
                self._waiting.pop(qid, None)
            return box[0] if box else "deny"
        return approve

    def answer(self, qid: str, answer: str) -> bool:
        with self._lock:
            waiting = self._waiting.get(qid)
        if waiting is None:
            return False
        waiting[1].append(answer)
        waiting[0].set()
        return True


def _event(e) -> dict[str, Any]:
    return {"kind": e.kind, "step": e.step, "text": e.text, **e.data}


def extras_router(kernel, *, max_agents: int = MAX_AGENTS) -> APIRouter:
    r = APIRouter(prefix="/llmos")
    run = asyncio.to_thread  # the kernel API blocks: keep the event loop free
    spawning = threading.Lock()  # the count of running agents and a spawn, together
    spawned: dict[str, bool] = {}  # pid -> detached, for agents spawned over HTTP
    questions = _Questions()

    @r.get("/ps")
    async def ps() -> list[dict[str, Any]]:
        return kernel.ps()

    @r.get("/engines")
    async def engines() -> list[dict[str, Any]]:
        return kernel.engines()

    @r.post("/kill/{request_id}")
    async def kill(request_id: str) -> dict[str, Any]:
        if not kernel.cancel(request_id):
            raise ProcessNotFoundError(f"no running request or agent {request_id!r} (see GET /llmos/ps)",
                                 param="request_id")
        return {"killed": request_id}

    @r.post("/agents")
    async def agent_spawn(request: Request, body: AgentSpawn) -> dict[str, Any]:
        if body.approvals and not getattr(request.state, "trusted", False):  # an answer can grant "always"
            raise ApprovalsRefusedError("agents that ask approvals need the Unix socket or an API key: "
                                        "spawn it without approvals (ungranted tools are denied)", param="approvals")

        def spawn():
            if body.model is not None:  # a served name, never a path on this machine
                kernel.registry.resolve(body.model, allow_paths=False)
            holder: dict[str, Any] = {}
            with spawning:
                if sum(not p.state.finished for p in kernel.processes.list() if p.pid in spawned) >= max_agents:
                    raise TooManyAgentsError(max_agents)
                proc = kernel.spawn(body.goal, tools=body.tools, model=body.model, adapter=body.adapter,
                                    max_steps=body.max_steps, max_tokens=body.max_tokens, session=body.session,
                                    owner=body.owner, priority=body.priority, tool_choice=body.tool_choice,
                                    approve=questions.asker(holder) if body.approvals else None)
                holder["proc"] = proc
                for pid in [p for p in spawned if kernel.processes.get(p) is None]:
                    del spawned[pid]  # pruned by the process table
                spawned[proc.pid] = body.detach
            return proc

        proc = await run(spawn)
        return {"pid": proc.pid, "session": proc.session_id}

    def _proc(pid: str):
        proc = kernel.processes.get(pid)
        if proc is None:
            raise ProcessNotFoundError(f"no agent {pid!r} (finished agents are listed for a minute; their sessions "
                                 f"stay under /llmos/sessions)", param="pid")
        return proc

    @r.get("/agents/{pid}")
    async def agent_show(pid: str) -> dict[str, Any]:
        proc = _proc(pid)
        events = [_event(e) for e in proc.history() if e.kind != "token"]
        return {**proc.as_row(), "answer": proc.answer, "error": proc.error, "events": events}

    @r.get("/agents/{pid}/events")
    async def agent_events(request: Request, pid: str, since: int = 0) -> StreamingResponse:
        proc = _proc(pid)

        async def stream():  # polled, not waited on in a thread: streams never hold the server's workers
            i = max(0, since)
            while True:
                batch = proc.events_since(i, 0)
                for e in batch:
                    yield "data: " + json.dumps(_event(e), default=str) + "\n\n"
                i += len(batch)
                if not batch and proc.state.finished:
                    break
                if not batch:
                    await asyncio.sleep(EVENT_POLL_S)
                if await request.is_disconnected():
                    if not spawned.get(proc.pid, True):
                        proc.kill()  # its client left: not detached, so its work stops
                    return
            end = {**proc.as_row(), "answer": proc.answer, "error": proc.error}
            yield "data: " + json.dumps({"end": end}, default=str) + "\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @r.post("/agents/{pid}/approve")
    async def agent_approve(pid: str, body: Approval) -> dict[str, Any]:
        _proc(pid)
        if not questions.answer(body.id, body.answer):
            raise InvalidRequestError(f"no approval question {body.id!r} is waiting (answered, or timed out)",
                                      param="id")
        return {"answered": body.id, "answer": body.answer}

    @r.get("/modules")
    async def modules() -> list[dict[str, Any]]:
        return await run(kernel.modules_info)

    @r.post("/modules/{name}/load")
    async def insmod(name: str, driver: str | None = None) -> dict[str, Any]:
        return await run(kernel.insmod, name, driver=driver)

    @r.post("/modules/{name}/unload")
    async def rmmod(name: str, force: bool = False) -> dict[str, Any]:
        return {"unloaded": name, "cancelled": await run(kernel.rmmod, name, force=force)}

    return r
