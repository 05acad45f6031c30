"""memfs over HTTP (`/llmos/mem/...`): every `kernel.mem` operation a client needs, each one the
MemFS call of the same name (so a `Client`'s `mem` is the kernel's: shell/client/mem.py).

What reads this machine's files by path (`import`) or creates stores (`mount`), the repair
(`fsck`) and a volume's snapshots (take, list, roll back, delete) sit under /llmos/admin/mem/: the
owner's (Unix socket) or an API key holder's only (security.py). `import` streams its progress as
SSE: `{"done": N, "total": M}` events, then `{"result": {...}}` (or `{"error": {...}}`).

Each path is checked against the request's tenant first (tenancy.py): a tenant reads its home and what is
shared with it, writes its home only; a search of "/" covers what it may read (kernel/tenants/scope.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from llmos.kernel.errors import InvalidRequestError, LlmosError
from llmos.kernel.memfs.paths import normalize
from llmos.kernel.memfs.grep import GREP_TIMEOUT_S
from llmos.kernel.tenants.scope import ScopedMem

from .sse import KEEPALIVE, KEEPALIVE_S, sse
from .security import tenant_of


class MemWrite(BaseModel):
    path: str
    text: str
    tags: list[str] = Field(default_factory=list, max_length=64)
    source: str | None = None


class MemAppend(BaseModel):
    path: str
    text: str


class MemMove(BaseModel):
    src: str
    dst: str


class MemFind(BaseModel):
    query: str
    within: str = "/"
    k: int = 5


class MemGrep(BaseModel):
    pattern: str = Field(max_length=1000)
    within: str = "/"
    ignore_case: bool = False
    timeout: float = Field(GREP_TIMEOUT_S, gt=0, le=10, description="Seconds before the pattern is refused.")


class MemSnapshot(BaseModel):
    name: str | None = Field(None, max_length=64, description="Default: the time.")


class MemImport(BaseModel):
    source: str
    to: str
    hidden: bool = False
    max_bytes: int | None = Field(None, ge=1)


def mem_router(kernel) -> APIRouter:
    r = APIRouter(prefix="/llmos")
    run = asyncio.to_thread  # memfs is SQLite + FAISS + the embedder: keep the event loop free

    def mem(request: Request) -> ScopedMem:
        """memfs as the request's tenant sees it (every path checked, refusals audited)."""
        return ScopedMem(kernel.mem, tenant_of(request), kernel.tenants)

    @r.get("/mem/ls")
    async def mem_ls(request: Request, path: str = "/", recursive: bool = False) -> list[dict[str, Any]]:
        return await run(mem(request).ls, path, recursive)

    @r.get("/mem/cat")
    async def mem_cat(request: Request, path: str) -> dict[str, Any]:
        return {"path": path, "text": await run(mem(request).cat, path)}

    @r.get("/mem/stat")
    async def mem_stat(request: Request, path: str) -> dict[str, Any]:
        return await run(mem(request).stat, path)

    @r.put("/mem/write")
    async def mem_write(request: Request, body: MemWrite) -> dict[str, Any]:
        meta = {"source": body.source} if body.source is not None else {}
        return await run(lambda: mem(request).write(body.path, body.text, tags=body.tags, **meta))

    @r.post("/mem/append")
    async def mem_append(request: Request, body: MemAppend) -> dict[str, Any]:
        return await run(mem(request).append, body.path, body.text)

    @r.post("/mem/mv")
    async def mem_mv(request: Request, body: MemMove) -> dict[str, Any]:
        await run(mem(request).mv, body.src, body.dst)
        return {"moved": body.src, "to": body.dst}

    @r.delete("/mem/rm")
    async def mem_rm(request: Request, path: str, recursive: bool = False) -> dict[str, Any]:
        return {"removed": await run(mem(request).rm, path, recursive)}

    @r.post("/mem/find")
    async def mem_find(request: Request, body: MemFind) -> list[dict[str, Any]]:
        return await run(mem(request).find, body.query, body.within, body.k)

    @r.post("/mem/grep")
    async def mem_grep(request: Request, body: MemGrep) -> list[dict[str, Any]]:
        return await run(mem(request).grep, body.pattern, body.within, body.ignore_case, body.timeout)

    @r.get("/mem/volumes")
    async def mem_volumes(request: Request) -> list[dict[str, Any]]:
        rows = await run(kernel.mem.volumes)
        if tenant_of(request).admin:
            return rows
        return [{k: v for k, v in row.items() if k != "dir"} for row in rows]  # no paths of this machine

    @r.post("/admin/mem/mount/{name}")
    async def mem_mount(name: str) -> dict[str, Any]:
        return {"mounted": name, "at": await run(kernel.mem.mount, name)}

    @r.post("/admin/mem/fsck")
    async def mem_fsck(repair: bool = False) -> list[dict[str, Any]]:
        return await run(kernel.mem.fsck, repair)

    # snapshots act on a whole volume (every tenant's files in it): an admin's only
    @r.get("/admin/mem/snapshots")
    async def mem_snapshots(volume: str | None = None) -> list[dict[str, Any]]:
        return await run(kernel.mem.snapshots, volume)

    @r.post("/admin/mem/snapshots/{volume}")
    async def mem_snapshot(volume: str, body: MemSnapshot) -> dict[str, Any]:
        return await run(kernel.mem.snapshot, volume, body.name)

    @r.post("/admin/mem/snapshots/{volume}/{name}/rollback")
    async def mem_rollback(volume: str, name: str) -> dict[str, Any]:
        return await run(kernel.mem.rollback, volume, name)

    @r.delete("/admin/mem/snapshots/{volume}/{name}")
    async def mem_delete_snapshot(volume: str, name: str) -> dict[str, Any]:
        await run(kernel.mem.delete_snapshot, volume, name)
        return {"deleted": name, "volume": volume}

    @r.post("/admin/mem/import")
    async def mem_import(request: Request, body: MemImport) -> StreamingResponse:
        if not Path(body.source).expanduser().is_dir():  # refused as a 4xx, before the stream starts
            raise InvalidRequestError(f"{body.source} is not a directory on the server's machine", param="source")
        normalize(body.to, param="to")
        return StreamingResponse(_import_events(request, kernel, body), media_type="text/event-stream")

    return r


async def _import_events(request: Request, kernel, body: MemImport):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(events.put_nowait, {"done": done, "total": total})

    def work() -> dict[str, Any]:
        return kernel.mem.import_dir(body.source, body.to, progress=progress, hidden=body.hidden,
                                     max_bytes=body.max_bytes)

    job = asyncio.ensure_future(asyncio.to_thread(work))
    while not job.done() or not events.empty():
        getter = asyncio.ensure_future(events.get())
        await asyncio.wait({getter, job}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield sse(getter.result())
        else:
            getter.cancel()
            if not job.done():
                yield KEEPALIVE  # a big file is still embedding
        if await request.is_disconnected():
            return  # the import goes on to the end of its current batch; what was written stays consistent
    try:
        yield sse({"result": job.result()})
    except LlmosError as exc:
        yield sse({"error": {"message": str(exc), "code": exc.code, "param": getattr(exc, "param", None)}})
