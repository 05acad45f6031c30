"""`llmos up`, `status`, `down`, `logs`: the resident kernel's lifecycle (shell/daemon.py has its files).

`up` starts `llmos serve --socket $LLMOS_HOME/llmos.sock` detached (a new session, stdin closed, output
to logs/stderr.log), waits until /health answers over the socket, and prints where it listens; a
running daemon is reported instead, a stale pid file (a crash) replaced. `status` asks
/llmos/status over the socket. `down` asks /llmos/shutdown (SIGTERM when the socket does not
answer) and waits until the process is gone.

Exit codes: 0 done (`status`: running); 1 a failure (the message says what, and names the log);
2 bad input; 3 (`status`) llmos is not running.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Optional

import typer

from llmos.kernel.errors import DaemonNotRunningError, LlmosError
from llmos.kernel.lib.pids import pid_alive

from . import daemon
from .cli_common import EXIT_INTERRUPTED, STATE, err, fail, out
from .cli_serve import duration_option

EXIT_NOT_RUNNING = 3


def _home() -> Path:
    from llmos.kernel.config import default_home

    return Path(STATE["home"]).expanduser() if STATE["home"] else default_home()


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


def _report(info: daemon.DaemonInfo, prefix: str) -> None:
    err.print(f"{prefix} (pid {info.pid}, llmos {info.version})\n  socket: {info.socket}\n  tcp:    {info.tcp}/v1",
              highlight=False)


def up(
    host: str = typer.Option("127.0.0.1", "--host", help="TCP address to listen on too."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free port)."),
    grace: float = typer.Option(10.0, "--grace", min=0, help="Seconds open requests get on a stop (SIGTERM)."),
    preload: bool = typer.Option(True, "--preload/--no-preload", help="Load the default model before serving."),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds to wait for the daemon to answer."),
    idle_exit: Optional[str] = typer.Option(
        None, "--idle-exit", help="Exit once no model is loaded and no client is connected for this long "
                                  "(seconds or '10m')."),
) -> None:
    """Start the resident kernel detached (`llmos serve` on $LLMOS_HOME/llmos.sock and TCP)."""
    duration_option(idle_exit, "idle_exit")  # refused here, before anything starts
    home = _home()
    info = daemon.daemon_address(home)
    if info.state == "running":
        try:
            daemon.probe(home)
        except LlmosError as exc:
            raise fail(exc, False) from None
        _report(info, "llmos is already running")
        return
    if info.state == "stale":
        err.print(f"replacing the stale pid file of a crashed daemon (pid {info.pid})", highlight=False)
    try:
        info = daemon.start(home, host=host, port=port, grace=grace, preload=preload, idle_exit=idle_exit,
                            timeout=timeout)
    except LlmosError as exc:
        raise fail(exc, False) from None
    _report(info[0], "llmos is up" if info[1] else "llmos is already running")


def status(as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
    """Show the resident kernel: pid, uptime, version, addresses, models, clients, queue. Exit 3 when down."""
    home = _home()
    info = daemon.daemon_address(home)
    try:
        daemon.probe(home)
        with daemon.uds_client(info.socket) as client:
            body = client.get("/llmos/status").json()
    except DaemonNotRunningError as exc:
        if as_json:
            typer.echo(json.dumps({"running": False, "state": info.state, "pid": info.pid, "message": str(exc)}))
        else:
            err.print(str(exc), highlight=False)
        raise typer.Exit(EXIT_NOT_RUNNING) from None
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps({"running": True, **body}))
        return
    listen = body["listen"]
    out.print(f"llmos {body['version']} running, pid {body['pid']}, up {body['uptime_s']:.0f} s\n"
              f"  socket:  {listen['socket']}\n  tcp:     {listen['tcp']}/v1\n"
              f"  clients: {body['clients']['connections']} connections, {body['clients']['requests']} requests\n"
              f"  queue:   {body['queue']['waiting']} waiting, {body['queue']['running']} running", highlight=False)
    for m in body["models"]:
        out.print(f"  model {m['name']} on {m['driver']}: {m['memory_bytes'] / 2**20:.0f} MiB, "
                  f"idle {m['idle_s']:.0f} s", highlight=False)


def down(grace: float = typer.Option(10.0, "--grace", min=0,
                                     help="Seconds running requests get to finish before they are cancelled."),
         timeout: float = typer.Option(30.0, "--timeout", min=1,
                                       help="Seconds to wait after the grace period before killing it (SIGKILL).")
         ) -> None:
    """Stop the resident kernel gracefully and wait until it is gone."""
    home = _home()
    info = daemon.daemon_address(home)
    if info.state == "stale":
        daemon.pid_path(home).unlink(missing_ok=True)
        err.print(f"llmos is not running (removed the stale pid file of pid {info.pid})", highlight=False)
        return
    if info.state == "down":
        err.print("llmos is not running", highlight=False)
        return
    if info.pid is None:
        raise fail(LlmosError("the daemon is still starting: run `llmos down` again once `llmos status` shows it"),
                   False)
    try:
        with daemon.uds_client(info.socket, timeout=5) as client:
            client.post("/llmos/shutdown", json={"grace": grace}).raise_for_status()
    except Exception:  # noqa: BLE001 - the socket does not answer: the signal does the same
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + timeout
    while not _gone(info.pid) or daemon.daemon_address(home).state != "down":
        if time.monotonic() > deadline:
            os.kill(info.pid, signal.SIGKILL)
            raise fail(LlmosError(f"the daemon (pid {info.pid}) did not stop within {grace + timeout:g} s: killed it; "
                                  f"see {daemon.log_dir(home) / 'llmos.log'}"), False)
        time.sleep(0.05)
    err.print(f"llmos stopped (pid {info.pid})", highlight=False)


def logs(lines: int = typer.Option(50, "-n", "--lines", min=0, help="Show the last N lines."),
         follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines (across rotations).")
         ) -> None:
    """Show the resident kernel's log ($LLMOS_HOME/logs/llmos.log)."""
    path = daemon.log_dir(_home()) / "llmos.log"
    if not path.exists() and not follow:
        raise fail(LlmosError(f"no log yet at {path}: the daemon has not run for this LLMOS_HOME"), False)
    fh = None
    if follow and path.exists():  # opened before the tail is read: what is appended meanwhile is followed
        fh = open(path, encoding="utf-8", errors="replace")
        fh.seek(0, os.SEEK_END)
    for line in daemon.tail_lines(path, lines, end=fh.tell() if fh else None):
        typer.echo(line)
    if follow:
        try:
            _follow(path, fh)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _follow(path: Path, fh=None) -> None:
    """Print what is appended to `path` from `fh`'s position (a file that appears later: from its start);
    when it is rotated (a new inode, or shorter), finish the old file and read the new one from its start."""
    inode = os.fstat(fh.fileno()).st_ino if fh is not None else None
    while True:
        try:
            st = path.stat()
        except FileNotFoundError:
            time.sleep(0.2)
            continue
        if fh is None or st.st_ino != inode or st.st_size < fh.tell():
            if fh is not None:
                typer.echo(fh.read(), nl=False)  # what the old file got before it was renamed
                fh.close()
            fh = open(path, encoding="utf-8", errors="replace")
            inode = st.st_ino
        chunk = fh.read()
        if chunk:
            typer.echo(chunk, nl=False)
        else:
            time.sleep(0.2)

