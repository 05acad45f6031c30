"""`llmos serve`: the OpenAI-compatible HTTP API (FastAPI on uvicorn)."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
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


def _key(api_key: Optional[str], key_file: Optional[Path]) -> Optional[str]:
    """The API key from --api-key / LLMOS_API_KEY or from --api-key-file (one of them)."""
    if key_file is None:
        if api_key and any(arg == "--api-key" or arg.startswith("--api-key=") for arg in sys.argv):
            err.print("warning: --api-key on the command line is visible to every user in `ps`: "
                      "prefer LLMOS_API_KEY or --api-key-file", highlight=False)
        return api_key or None
    if api_key:
        raise fail(InvalidRequestError("give the API key once: --api-key (or LLMOS_API_KEY) or --api-key-file",
                                       param="api_key_file"), False)
    try:
        key = key_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(InvalidRequestError(f"cannot read the API key file {key_file}: {exc}", param="api_key_file"),
                   False) from None
    if not key:
        raise fail(InvalidRequestError(f"the API key file {key_file} is empty", param="api_key_file"), False)
    return key


def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="LLMOS_API_KEY", show_envvar=True,
        help="Require Authorization: Bearer KEY on every endpoint but /health (and /metrics with "
             "--public-metrics). On the command line the key shows in `ps`: prefer LLMOS_API_KEY or --api-key-file."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="Read the API key from this file."),
    public_metrics: bool = typer.Option(False, "--public-metrics",
                                        help="Serve /metrics without the API key (for a scraper without one)."),
    allowed_host: Optional[list[str]] = typer.Option(
        None, "--allowed-host",
        help="Without an API key only loopback Host names (localhost, 127.0.0.1, [::1]) are answered, against "
             "DNS rebinding: also answer this name (repeatable; --host is added unless it is 0.0.0.0 or ::)."),
    allow_origin: Optional[list[str]] = typer.Option(
        None, "--allow-origin",
        help="Answer requests from web pages of this origin, e.g. http://localhost:3000, with CORS headers "
             "(repeatable; '*' for any). Other pages' requests are refused."),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="Waiting requests per model before 429."),
    max_connections: int = typer.Option(512, "--max-connections", min=1,
                                        help="Open connections and requests at most; beyond, requests get 503."),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", min=0.1,
        help="Seconds a connection may take to send a request's head, and a body may pause, before it is closed."),
    max_agents: int = typer.Option(8, "--max-agents", min=1, help="Agents HTTP clients may run at once."),
    insecure_public: bool = typer.Option(False, "--insecure-public",
                                         help="Allow a non-loopback address without an API key."),
    preload: bool = typer.Option(True, "--preload/--no-preload", help="Load the default model before serving."),
) -> None:
    """Serve the kernel over an OpenAI-compatible HTTP API."""
    import uvicorn

    from .server.app import create_app
    from .server.security import guarded_h11

    api_key = _key(api_key, api_key_file)
    if not _loopback(host) and not api_key and not insecure_public:
        raise fail(InvalidRequestError(
            f"refusing to listen on {host} without an API key: pass --api-key-file or LLMOS_API_KEY "
            f"(or --insecure-public)", param="host"), False)
    hosts = list(allowed_host or []) + ([host] if host not in ("0.0.0.0", "::", "") else [])
    with kernel_session(False, max_queue=max_queue) as kernel:
        if preload:
            kernel.load()
        app = create_app(kernel, api_key=api_key, allowed_hosts=hosts, allowed_origins=allow_origin or (),
                         public_metrics=public_metrics, read_timeout=header_timeout, max_agents=max_agents)
        err.print(f"llmos serving on http://{host}:{port}/v1" + (" (API key required)" if api_key else ""))
        # a stop (SIGTERM, Ctrl-C) waits at most 5 s for open requests; then the kernel cancels the rest.
        # Idle connections stay open 65 s, longer than clients keep them (httpx: 5 s, like uvicorn's own
        # default: a client reusing a connection just as the server drops it got no response at all).
        # A connection must send its request head within --header-timeout (uvicorn alone waits forever).
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                    timeout_keep_alive=65, limit_concurrency=max_connections, http=guarded_h11(header_timeout))
