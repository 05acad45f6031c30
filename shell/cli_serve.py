"""`llmos serve`: the OpenAI-compatible HTTP API (FastAPI on uvicorn)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Optional

import typer

from llmos.kernel.errors import InvalidRequestError

from .cli_common import err, fail, kernel_session


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (socket.gaierror, ValueError):
        return False


def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LLMOS_API_KEY",
                                          help="Require Authorization: Bearer KEY on every endpoint but /health."),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="Waiting requests per model before 429."),
    insecure_public: bool = typer.Option(False, "--insecure-public",
                                         help="Allow a non-loopback address without an API key."),
    preload: bool = typer.Option(True, "--preload/--no-preload", help="Load the default model before serving."),
) -> None:
    """Serve the kernel over an OpenAI-compatible HTTP API."""
    import uvicorn

    from .server.app import create_app

    if not _loopback(host) and not api_key and not insecure_public:
        raise fail(InvalidRequestError(
            f"refusing to listen on {host} without an API key: pass --api-key (or --insecure-public)",
            param="host"), False)
    with kernel_session(False, max_queue=max_queue) as kernel:
        if preload:
            kernel.load()
        err.print(f"llmos serving on http://{host}:{port}/v1" + (" (API key required)" if api_key else ""))
        # a stop (SIGTERM, Ctrl-C) waits at most 5 s for open requests; then the kernel cancels the rest.
        # Idle connections stay open 65 s, longer than clients keep them (httpx: 5 s, like uvicorn's own
        # default: a client reusing a connection just as the server drops it got no response at all)
        uvicorn.run(create_app(kernel, api_key=api_key), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=5, timeout_keep_alive=65)
