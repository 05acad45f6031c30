"""`GET /llmos/status`, `GET /llmos/alerts` and `POST /llmos/shutdown`: the resident kernel's state, its
alerts and its stop.

All three are served only to the owner (over the Unix socket) or, over TCP, with the API key: a server
without a key refuses them on TCP (security.py, OWNER_PATHS). `listen.py` puts the uvicorn server and
the listen addresses in `app.state` before serving; without them (a server under test) the fields
are empty.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from .listen import FORCED_AFTER_S


class Shutdown(BaseModel):
    grace: float = Field(10.0, ge=0, le=3600, description="Seconds running requests get to finish before "
                                                             "they are cancelled.")


class ModelStatus(BaseModel):
    name: str
    driver: str
    memory_bytes: int
    idle_s: float = Field(description="Seconds since the model's last request finished (0 while it has requests).")
    keep_alive_s: float | None = Field(description="Idle seconds after which it is unloaded (null: never).")
    running: int
    waiting: int


class Status(BaseModel):
    pid: int
    version: str
    uptime_s: float
    listen: dict[str, str | None] = Field(description="{tcp: http://HOST:PORT, socket: PATH}; null where not "
                                                      "listening.")
    models: list[ModelStatus]
    clients: dict[str, int] = Field(description="connections: open HTTP connections (over TCP and the socket, "
                                                "this one included, idle keep-alive ones too); requests: "
                                                "requests being answered (streams included, this one too).")
    queue: dict[str, int] = Field(description="waiting and running requests over all loaded models.")


def status_router(kernel) -> APIRouter:
    r = APIRouter(prefix="/llmos")

    @r.get("/status", response_model=Status, summary="The resident kernel's state (owner or API key only)")
    async def status(request: Request) -> dict[str, Any]:
        import llmos

        state = request.app.state
        server = getattr(state, "server", None)
        engines = kernel.engines()
        return {
            "pid": os.getpid(), "version": llmos.__version__,
            "uptime_s": time.time() - getattr(state, "started", time.time()),
            "listen": getattr(state, "listen", {"tcp": None, "socket": None}),
            "models": [{"name": e["model"], **{k: e[k] for k in ("driver", "memory_bytes", "idle_s", "keep_alive_s",
                                                                   "running", "waiting")}} for e in engines],
            "clients": {"connections": len(server.server_state.connections) if server else 0,
                        "requests": len(server.server_state.tasks) if server else 0},
            "queue": {"waiting": sum(e["waiting"] for e in engines), "running": sum(e["running"] for e in engines)},
        }

    @r.get("/alerts", summary="The [alerts] rules' states and recently resolved alerts (owner or API key only)")
    async def alerts() -> dict[str, Any]:
        return kernel.alerts()

    @r.post("/shutdown", summary="Stop the resident kernel gracefully (owner or API key only)")
    async def shutdown(request: Request, body: Shutdown | None = None) -> dict[str, Any]:
        server = getattr(request.app.state, "server", None)
        if server is None:
            return {"stopping": False}
        grace = (body or Shutdown()).grace  # read by uvicorn when it stops, and by listen._cancel_after_grace
        server.config.timeout_graceful_shutdown = grace + FORCED_AFTER_S
        server.should_exit = True  # stop accepting; open requests get the grace period, then are cancelled
        return {"stopping": True, "pid": os.getpid()}

    return r
