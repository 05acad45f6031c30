"""llmos-specific endpoints under /llmos/: processes, agents, modules and tokenization of the served kernel (memfs,
sessions and the rest: mem_routes.py, session_routes.py, admin_routes.py).

Agents spawned over HTTP are bounded: at most `max_agents` running at once (429), budgets capped (400),
and only the tools the request names (none if it names none). Their events stream as SSE
(`GET /llmos/agents/PID/events`); an agent spawned with `approvals: true` asks its client before a
tool needs a capability not granted (an `approval` event; the client answers with
`POST /llmos/agents/PID/approve`, else it is denied after APPROVAL_TIMEOUT_S). An agent spawned
without `detach` is killed when an event stream of it disconnects before it ends: a dropped client
cancels its work.

Tenants (tenancy.py): ps lists a tenant's own requests and agents, kill and the agent routes act on its
own only, an agent runs as its spawner's tenant (quotas and priority class included), and loading or
unloading modules needs an admin."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from llmos.kernel.errors import InvalidRequestError, LlmosError, ProcessNotFoundError, QueueFullError

from .clients import ClientLabels, label_of
from .schemas import check_trust
from .security import is_owner, tenant_of
from .tenancy import agent_tools, check_owner, own_session, require_admin, visible
from .sse import KEEPALIVE, KEEPALIVE_S, sse

#: agents an HTTP client may have running at once, and each one's budgets
MAX_AGENTS = 8
MAX_AGENT_STEPS = 32
MAX_AGENT_TOKENS = 8192
#: seconds an agent waits for its client's answer to an approval question before it is denied
APPROVAL_TIMEOUT_S = 300.0
#: agent event streams open at once (each is polled)
MAX_EVENT_STREAMS = 64
#: seconds between two looks at an agent's events while streaming them
EVENT_POLL_S = 0.05


class TokenizeBody(BaseModel):
    model: str = Field(min_length=1, max_length=512)
    text: str = Field(max_length=200_000)


class ApprovalsRefusedError(InvalidRequestError, PermissionError):
    code = "approvals_need_trust"


class TooManyAgentsError(QueueFullError):
    """HTTP clients have `limit` agents running already (429, like a full queue)."""

    def __init__(self, limit: int, tenant: str | None = None) -> None:
        whose = f"tenant {tenant!r} has" if tenant else "HTTP clients have"
        LlmosError.__init__(self, f"{whose} {limit} agents running already: wait for one to finish, or kill one "
                                  f"(POST /llmos/kill/<pid>)")
        self.limit, self.retry_after = limit, 5.0


class TooManyStreamsError(QueueFullError):
    def __init__(self, limit: int) -> None:
        LlmosError.__init__(self, f"{limit} agent event streams are open already: close one, or poll "
                                  f"GET /llmos/agents/<pid>")
        self.limit, self.retry_after = limit, 5.0


class AgentSpawn(BaseModel):
    goal: str | None = None
    tools: list[str] = Field(default_factory=list, max_length=64)  # over HTTP: only the tools named
    model: str | None = None
    adapter: str | None = None
    max_steps: int = Field(8, ge=1, le=MAX_AGENT_STEPS)
    max_tokens: int = Field(2048, ge=16, le=MAX_AGENT_TOKENS)
    session: str | None = None
    owner: str = Field("api", min_length=1, max_length=64)  # ignored: an agent runs as its spawner's tenant
    priority: str | int | None = None
    tool_choice: Literal["first", "auto"] = "first"
    approvals: bool = False
    detach: bool = False


class Approval(BaseModel):
    id: str = Field(max_length=64)
    answer: Literal["once", "always", "deny"]
    token: str = Field(max_length=128, description="The token the spawn answered: only the spawner answers.")


class _Spawned:
    """An agent spawned over HTTP: its secret token (the spawner's proof, for approvals and for the
    stream whose end kills a non-detached agent) and whether it is detached."""

    def __init__(self, detach: bool, counted: bool) -> None:
        self.token, self.detach, self.counted = secrets.token_urlsafe(24), detach, counted
        self.watching = 0  # the spawner's streams open now

    def holds(self, token: str | None) -> bool:
        return token is not None and secrets.compare_digest(token.encode(), self.token.encode())


class _Questions:
    """Approval questions waiting for their client's answer, by id."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[threading.Event, list[str], str]] = {}  # id -> (answered, answer, pid)
        self._lock = threading.Lock()

    def asker(self, holder: dict[str, Any]):
        def approve(tool: str, missing: frozenset[str]) -> str:
            qid = secrets.token_hex(8)
            done, box = threading.Event(), []
            with self._lock:
                self._waiting[qid] = (done, box, holder["proc"].pid)
            holder["proc"].post("approval", f"{tool} needs {', '.join(sorted(missing))}", id=qid, tool=tool,
                                missing=sorted(missing))
            done.wait(APPROVAL_TIMEOUT_S)
            with self._lock:
                self._waiting.pop(qid, None)
            return box[0] if box else "deny"
        return approve

    def answer(self, pid: str, qid: str, answer: str) -> bool:
        with self._lock:
            waiting = self._waiting.get(qid)
        if waiting is None or waiting[2] != pid:
            return False
        waiting[1].append(answer)
        waiting[0].set()
        return True


def _event(e) -> dict[str, Any]:
    return {"kind": e.kind, "step": e.step, "text": e.text, **e.data}


def extras_router(kernel, *, max_agents: int = MAX_AGENTS, max_event_streams: int = MAX_EVENT_STREAMS,
                  labels: ClientLabels | None = None, keys=None) -> APIRouter:
    r = APIRouter(prefix="/llmos")
    run = asyncio.to_thread  # the kernel API blocks: keep the event loop free
    spawning = threading.Lock()  # the count of running agents and a spawn, together
    spawned: dict[str, _Spawned] = {}  # pid -> its spawn, for agents spawned over HTTP
    questions = _Questions()
    labels = labels if labels is not None else ClientLabels()
    streams = [0]  # agent event streams open now: they are polled, so a bounded number

    @r.post("/tokenize")
    async def tokenize(request: Request, body: TokenizeBody) -> dict[str, Any]:
        """A served model's token ids for `text` (special tokens included, as a prompt is tokenized)."""
        owner, tenant = is_owner(request), tenant_of(request)

        def run() -> list[int]:
            kernel.registry.resolve(body.model, allow_paths=owner)  # a served name, never a path (but the owner's)
            return kernel.tokenize(body.text, model=body.model, tenant=tenant)  # its limits, as for a request

        return {"model": body.model, "tokens": await asyncio.to_thread(run)}

    @r.get("/ps")
    async def ps(request: Request) -> list[dict[str, Any]]:
        return visible(request, labels.annotate(kernel.ps()))  # labels of all of ps: others' stay

    @r.get("/tenants")
    async def tenants(request: Request) -> list[dict[str, Any]]:
        """Each tenant's limits and usage: tokens in/out, requests, queued, throttled (its own row only,
        but for an admin)."""
        known = keys.tenants() if keys is not None else []
        rows = kernel.tenants.rows(kernel.ps(), known)
        tenant = tenant_of(request)
        return rows if tenant.admin else [r for r in rows if r["tenant"] == tenant.name]

    @r.get("/engines")
    async def engines(request: Request) -> list[dict[str, Any]]:
        rows = kernel.engines()
        if tenant_of(request).admin:
            return rows
        return [{k: v for k, v in row.items() if k != "nodes"} for row in rows]  # remote nodes' URLs, errors

    @r.post("/kill/{request_id}")
    async def kill(request: Request, request_id: str) -> dict[str, Any]:
        row = next((p for p in kernel.ps() if p["id"] == request_id), None)
        if row is not None:
            check_owner(kernel, request, row.get("owner"), "kill", request_id, "request_id")
        if row is None or not kernel.cancel(request_id):
            raise ProcessNotFoundError(f"no running request or agent {request_id!r} (see GET /llmos/ps)",
                                 param="request_id")
        return {"killed": request_id}

    @r.post("/agents")
    async def agent_spawn(request: Request, body: AgentSpawn) -> dict[str, Any]:
        owner, tenant = is_owner(request), tenant_of(request)
        if body.approvals and not tenant.admin:  # an answer can grant "always"
            kernel.tenants.deny(tenant, "approvals", "agent spawn", "agents that ask approvals need an admin key")
            raise ApprovalsRefusedError("agents that ask approvals need an admin key or the Unix socket: "
                                        "spawn it without approvals (ungranted tools are denied)", param="approvals")
        check_trust(tenant, priority=body.priority, audit=kernel.tenants.deny)
        if body.session is not None:
            await run(own_session, kernel, request, body.session, "resume")

        def spawn():
            # a served name, never a path on this machine (but the owner's), nor one stored in a session
            for model in (body.model, body.session and kernel.sessions.get(body.session).model):
                if model:
                    kernel.registry.resolve(model, allow_paths=owner)
            holder: dict[str, Any] = {}
            with spawning:
                for pid in [p for p in spawned if kernel.processes.get(p) is None]:
                    del spawned[pid]  # pruned by the process table
                live = [kernel.processes.get(p) for p, s in spawned.items() if s.counted]
                live = [proc for proc in live if not proc.state.finished]
                if not owner and len(live) >= max_agents:  # the owner's own agents are not capped
                    raise TooManyAgentsError(max_agents)
                share = max(1, max_agents // 2)  # no tenant (but an admin) takes every place
                if not tenant.admin and sum(proc.owner == tenant.name for proc in live) >= share:
                    raise TooManyAgentsError(share, tenant.name)
                proc = kernel.spawn(body.goal, tools=agent_tools(kernel, tenant, body.tools), model=body.model,
                                    adapter=body.adapter,
                                    max_steps=body.max_steps, max_tokens=body.max_tokens, session=body.session,
                                    owner=tenant.name, tenant=tenant, priority=body.priority,
                                    tool_choice=body.tool_choice,
                                    approve=questions.asker(holder) if body.approvals else None)
                holder["proc"] = proc
                spawned[proc.pid] = _Spawned(body.detach, counted=not owner)
            return proc, spawned[proc.pid].token

        proc, token = await run(spawn)
        labels.record(proc.pid, label_of(request))
        return {"pid": proc.pid, "session": proc.session_id, "token": token}

    def _proc(request: Request, pid: str):
        proc = kernel.processes.get(pid)
        if proc is None:
            raise ProcessNotFoundError(f"no agent {pid!r} (finished agents are listed for a minute; their sessions "
                                 f"stay under /llmos/sessions)", param="pid")
        check_owner(kernel, request, proc.owner, "watch", pid, "pid")
        return proc

    @r.get("/agents/{pid}")
    async def agent_show(request: Request, pid: str) -> dict[str, Any]:
        proc = _proc(request, pid)
        events = [_event(e) for e in proc.history() if e.kind != "token"]
        return {**proc.as_row(), "answer": proc.answer, "error": proc.error, "events": events}

    @r.get("/agents/{pid}/events")
    async def agent_events(request: Request, pid: str, since: int = 0, token: str | None = None) -> StreamingResponse:
        proc = _proc(request, pid)
        if streams[0] >= max_event_streams:
            raise TooManyStreamsError(max_event_streams)
        spawn = spawned.get(proc.pid)
        kills = spawn is not None and not spawn.detach and spawn.holds(token)  # the spawner's stream

        async def stream():  # polled, not waited on in a thread: streams never hold the server's workers
            i, said = max(0, since), time.monotonic()
            streams[0] += 1  # counted once started (all on the event loop): a stream never started holds nothing
            if kills:
                spawn.watching += 1
            try:
                while True:
                    batch = proc.events_since(i, 0)
                    for e in batch:
                        yield sse(_event(e))
                    i += len(batch)
                    if not batch and proc.state.finished:
                        break
                    if batch:
                        said = time.monotonic()
                    else:
                        await asyncio.sleep(EVENT_POLL_S)
                        if time.monotonic() - said >= KEEPALIVE_S:
                            said = time.monotonic()
                            yield KEEPALIVE
                    if await request.is_disconnected():
                        return
                end = {**proc.as_row(), "answer": proc.answer, "error": proc.error}
                yield sse({"end": end})
            finally:
                streams[0] -= 1
                if kills:
                    spawn.watching -= 1
                    if not spawn.watching and not proc.state.finished:
                        proc.kill()  # its spawner left (or was cut off): not detached, so its work stops

        return StreamingResponse(stream(), media_type="text/event-stream")

    @r.post("/agents/{pid}/approve")
    async def agent_approve(request: Request, pid: str, body: Approval) -> dict[str, Any]:
        _proc(request, pid)
        spawn = spawned.get(pid)
        if spawn is None or not spawn.holds(body.token):
            raise ApprovalsRefusedError("only the agent's spawner answers its approvals: send the token its "
                                        "spawn answered", param="token")
        if not questions.answer(pid, body.id, body.answer):
            raise InvalidRequestError(f"no approval question {body.id!r} is waiting (answered, or timed out)",
                                      param="id")
        return {"answered": body.id, "answer": body.answer}

    @r.get("/modules")
    async def modules() -> list[dict[str, Any]]:
        return await run(kernel.modules_info)

    @r.post("/modules/{name}/load")
    async def insmod(request: Request, name: str, driver: str | None = None) -> dict[str, Any]:
        require_admin(kernel, request, "insmod", name)
        return await run(kernel.insmod, name, driver=driver)

    @r.post("/modules/{name}/unload")
    async def rmmod(request: Request, name: str, force: bool = False) -> dict[str, Any]:
        require_admin(kernel, request, "rmmod", name)
        return {"unloaded": name, "cancelled": await run(kernel.rmmod, name, force=force)}

    return r
