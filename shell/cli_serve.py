"""`llmos serve`: the OpenAI-compatible HTTP API (FastAPI on uvicorn)."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Optional

import typer

from llmos.kernel.errors import InvalidRequestError

from .cli_common import STATE, err, fail, kernel_session


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (socket.gaierror, ValueError):
        return False


def _stored_keys() -> bool:
    """Tenants' keys exist in this LLMOS_HOME (`llmos keys add`): every TCP client then needs one."""
    from llmos.kernel.config import default_home
    from llmos.kernel.tenants.keys import KeyStore

    return bool(KeyStore(Path(STATE["home"]).expanduser() if STATE["home"] else default_home()))


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
    socket_file: Optional[Path] = typer.Option(
        None, "--socket",
        help="Also serve on this Unix socket (mode 0600; its clients are the owner and need no key), as the "
             "resident kernel of LLMOS_HOME: holds $LLMOS_HOME/llmos.lock, writes llmos.pid, logs to logs/."),
    grace: float = typer.Option(5.0, "--grace", min=0,
                                help="Seconds open requests get to finish on a stop before they are cancelled."),
    idle_exit: Optional[str] = typer.Option(
        None, "--idle-exit", help="Exit once no model is loaded and no client is connected for this long "
                                  "(seconds or '10m'; models unload after their keep_alive)."),
) -> None:
    """Serve the kernel over an OpenAI-compatible HTTP API."""
    from .server import listen
    from .server.app import create_app

    api_key = _key(api_key, api_key_file)
    idle_s = duration_option(idle_exit, "idle_exit")
    if not _loopback(host) and not api_key and not insecure_public and not _stored_keys():
        raise fail(InvalidRequestError(
            f"refusing to listen on {host} without an API key: pass --api-key-file or LLMOS_API_KEY, add "
            f"tenants' keys with `llmos keys add` (or --insecure-public)", param="host"), False)
    hosts = list(allowed_host or []) + ([host] if host not in ("0.0.0.0", "::", "") else [])
    daemon = _daemon(socket_file)
    try:
        with kernel_session(False, attach=False, max_queue=max_queue) as kernel:
            if preload:
                kernel.load()
            owner = str(socket_file.absolute()) if socket_file else None
            app = create_app(kernel, api_key=api_key, allowed_hosts=hosts, allowed_origins=allow_origin or (),
                             public_metrics=public_metrics, read_timeout=header_timeout, max_agents=max_agents,
                             owner_socket=owner)
            # a stop (SIGTERM, Ctrl-C) waits at most --grace s for open requests; then the kernel cancels the rest
            listen.run(app, host=host, port=port, grace=grace, header_timeout=header_timeout,
                       max_connections=max_connections, daemon=(daemon, owner) if daemon else None,
                       idle_exit=idle_s, models_loaded=lambda: bool(kernel.engines()),
                       cancel_all=lambda: [kernel.cancel(r["id"]) for r in kernel.ps()],
                       on_listen=lambda where: err.print(f"llmos serving on {where}" + (
                           " (API key required)" if api_key else ""), highlight=False))
    finally:
        if daemon is not None:
            daemon.release()


def duration_option(value: Optional[str], param: str) -> Optional[float]:
    """Seconds from a duration option (`--idle-exit 10m`); exit 2 with a clear message when bad."""
    from llmos.kernel.config import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise fail(InvalidRequestError(f"--{param.replace('_', '-')}: {exc}", param=param), False) from None


def _daemon(socket_file: Optional[Path]):
    """With --socket: this home's lock, taken now (before the kernel boots), and the log set up."""
    if socket_file is None:
        return None
    from llmos.kernel.config import default_home
    from llmos.kernel.errors import LlmosError

    from .daemon import DaemonLock
    from .server.listen import setup_log

    home = Path(STATE["home"]).expanduser() if STATE["home"] else default_home()
    lock = DaemonLock(home)
    try:
        lock.acquire()
    except LlmosError as exc:
        raise fail(exc, False) from None
    setup_log(home)
    return lock
