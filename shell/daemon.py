"""Finding and guarding the resident kernel (`llmos up`): its files under LLMOS_HOME, its lock, its version.

Files (all under `$LLMOS_HOME`):
- `llmos.lock`: the daemon holds an exclusive `fcntl.flock` on it for its whole life. The kernel drops
  the lock when the process ends, however it ends (kill -9 too), so "the lock is free" is the test of
  "no daemon runs", and a second daemon that cannot take it exits at once.
- `llmos.pid`: JSON {pid, version, started, tcp, socket}, written atomically once the daemon listens and
  removed when it stops. One left behind while the lock is free is stale (a crash): the next daemon
  removes it as soon as it holds the lock, so a pid file under a held lock always names the holder.
- `llmos.sock`: the Unix domain socket, mode 0600 from its creation: only the owner can connect, and a
  client there is the owner (no API key; see shell/server/security.py).
- `logs/llmos.log`: the daemon's log (rotated), `logs/stderr.log`: its raw output (tracebacks).

`start(home)` starts one detached (`llmos up`, and the shell when none is up). A client reuses
`daemon_address(home)` (where it listens, without connecting) and `probe(home)` (asks
/health over the socket and checks the version). Standard library only, but httpx inside `probe`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmos.kernel.errors import DaemonNotRunningError, LlmosError, VersionMismatchError
from llmos.kernel.lib.atomic import atomic_write_text


def socket_path(home: Path) -> Path:
    return Path(home) / "llmos.sock"


def pid_path(home: Path) -> Path:
    return Path(home) / "llmos.pid"


def lock_path(home: Path) -> Path:
    return Path(home) / "llmos.lock"


def log_dir(home: Path) -> Path:
    return Path(home) / "logs"


@dataclass(frozen=True)
class DaemonInfo:
    """What `daemon_address` finds. `state`: "running" (the lock is held and the pid file written),
    "starting" (the lock is held, no pid file yet), "stale" (a pid file but nobody holds the lock: a
    crash), "down" (neither)."""

    state: str
    pid: int | None = None
    version: str | None = None
    started: float | None = None
    tcp: str | None = None
    socket: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lock_held(home: Path) -> bool:
    path = lock_path(home)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False


def read_pid_file(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(pid_path(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def daemon_address(home: Path) -> DaemonInfo:
    """Where the daemon of `home` listens (from its pid file) and whether it runs, without connecting."""
    home = Path(home)
    held = _lock_held(home)
    data = read_pid_file(home)
    if data is None:
        return DaemonInfo("starting" if held else "down")
    fields = {k: data.get(k) for k in ("pid", "version", "started", "tcp", "socket")}
    return DaemonInfo("running" if held else "stale", **fields)


class DaemonLock:
    """The exclusive lock of one daemon on `home`, held from `acquire()` until the process exits."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self._fd: int | None = None
        self.socket: str | None = None  # the Unix socket this daemon bound (removed by release)

    def acquire(self) -> None:
        """Take the lock, or raise LlmosError naming the daemon that holds it."""
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(self.home), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            data = read_pid_file(self.home) or {}
            who = f"pid {data['pid']}, socket {data.get('socket')}" if data else "it is still starting"
            raise LlmosError(f"llmos is already running for {self.home} ({who}): `llmos status` shows it, "
                             f"`llmos down` stops it") from None
        self._fd = fd
        # a pid file left now is a crashed daemon's: remove it at once, so that "lock held + pid file"
        # always names the holder (`down` signals that pid: never a stale, maybe reused, one)
        with contextlib.suppress(FileNotFoundError):
            pid_path(self.home).unlink()

    def write_pid_file(self, info: DaemonInfo) -> None:
        atomic_write_text(pid_path(self.home), json.dumps(info.as_dict()))
        os.chmod(pid_path(self.home), 0o600)

    def release(self) -> None:
        """Remove the pid file and the socket, then drop the lock (files first: no window where a new
        daemon's files could be deleted by this one)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            pid_path(self.home).unlink()
        if self.socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)
        os.close(self._fd)
        self._fd = None


def bind_unix(path: str | Path) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 from its creation (the umask is 0177 while it binds).
    A leftover socket is removed when nothing answers on it; one that answers is refused."""
    path = str(path)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise LlmosError(f"{path} exists and is not a socket: move it away")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its daemon died without removing it
        else:
            raise LlmosError(f"another server answers on {path}: stop it first")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uds_client(path: str | Path, timeout: float = 10.0):
    """An httpx.Client talking HTTP over the Unix socket `path` (base URL http://localhost)."""
    import httpx

    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://localhost", timeout=timeout)


def check_version(daemon: str, client: str | None = None) -> None:
    """Raise VersionMismatchError when the daemon runs another llmos version than `client` (this one)."""
    if client is None:
        import llmos

        client = llmos.__version__
    if daemon != client:
        raise VersionMismatchError(
            f"the resident kernel runs llmos {daemon} but this client is llmos {client}: restart it with "
            f"`llmos down && llmos up` (or use the matching client)", daemon=daemon, client=client)


def probe(home: Path, client_version: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's /health over its socket, after checking its version against `client_version`.
    Raises DaemonNotRunningError (with the stale-file note after a crash) or VersionMismatchError."""
    import httpx

    info = daemon_address(home)
    if info.state != "running" or not info.socket:
        note = " (a stale pid file from a crash is left: it is replaced on the next `llmos up`)" \
            if info.state == "stale" else " (it is starting)" if info.state == "starting" else ""
        raise DaemonNotRunningError(f"llmos is not running for {home}{note}: start it with `llmos up`")
    try:
        with uds_client(info.socket, timeout) as client:
            health = client.get("/health").json()
    except (httpx.HTTPError, ValueError) as exc:
        raise DaemonNotRunningError(f"the llmos daemon (pid {info.pid}) does not answer on {info.socket}: {exc}; "
                                    f"see {log_dir(home) / 'llmos.log'}") from None
    check_version(str(health.get("version")), client_version)
    return health


def tail_lines(path: Path, n: int, end: int | None = None) -> list[str]:
    """The last `n` lines of a log (read from its last 256 KiB), of its first `end` bytes if given."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            stop = fh.tell() if end is None else min(end, fh.tell())
            fh.seek(max(0, stop - 256 * 1024))
            return fh.read(stop - fh.tell()).decode("utf-8", "replace").splitlines()[-n:] if n > 0 else []
    except OSError:
        return []


#: how long `up` waits for its own daemon to exit after another one answered first (never kills it)
LOSER_EXIT_S = 30.0


def start(home: Path, *, host: str = "127.0.0.1", port: int = 8000, grace: float = 10.0, preload: bool = True,
          idle_exit: str | None = None, timeout: float = 120.0) -> tuple[DaemonInfo, bool]:
    """Start `llmos serve --socket` for `home` detached (a new session, stdin closed, output to
    logs/stderr.log) and wait until it answers. Returns (its info, whether this call started it: False
    when another daemon answered first). Raises LlmosError naming the logs when it does not come up,
    VersionMismatchError when a daemon of another version answers."""
    home = Path(home)
    logs = log_dir(home)
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    stderr_log = logs / "stderr.log"
    cmd = [sys.executable, "-m", "llmos", "--home", str(home), "serve", "--socket", str(socket_path(home)),
           "--host", host, "--port", str(port), "--grace", str(grace), "--preload" if preload else "--no-preload"]
    if idle_exit is not None:
        cmd += ["--idle-exit", idle_exit]
    with open(stderr_log, "ab") as fh:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    last: LlmosError | None = None
    while time.monotonic() < deadline:
        try:
            probe(home, timeout=2)
        except DaemonNotRunningError as exc:
            last = exc
        else:
            info = daemon_address(home)
            if info.pid != child.pid:  # another daemon won: ours exits when it finds the lock taken
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(LOSER_EXIT_S)  # so that `up` returns with one daemon running, not two for a while
            return info, info.pid == child.pid
        if child.poll() is not None and daemon_address(home).state in ("down", "stale"):
            break  # ours died and no other daemon is starting
        time.sleep(0.1)
    code = child.poll()
    if code is None:
        child.terminate()
    what = f"exited with status {code} before answering" if code is not None else \
        f"did not answer within {timeout:g} s ({last})"
    tail = "\n".join(tail_lines(logs / "llmos.log", 5) + tail_lines(stderr_log, 10))
    raise LlmosError(f"the daemon did not come up: it {what}; see {logs / 'llmos.log'} and {stderr_log}:\n{tail}")
