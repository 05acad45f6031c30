"""Running the app on uvicorn: on TCP, and for the resident kernel also on its Unix socket, with its pid
file and its rotating log (`llmos serve --socket PATH`, which `llmos up` starts detached).

One `uvicorn.Server` serves every listening socket (`Server.run(sockets=[...])`). A stop (SIGTERM,
Ctrl-C, POST /llmos/shutdown) closes the listeners, gives open requests `grace` seconds, cancels the
rest; the caller then shuts the kernel down (requests cancelled, sessions saved), removes the pid file
and the socket, and only then drops the lock (`DaemonLock.release`): a new daemon never meets the old
kernel still running.
"""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from ..daemon import DaemonInfo, DaemonLock, bind_unix, log_dir

#: the daemon's log: logs/llmos.log, rotated at LOG_BYTES, LOG_BACKUPS old files kept (llmos.log.1 ...)
LOG_BYTES = 5 << 20
LOG_BACKUPS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_log(home: Path) -> Path:
    """Send llmos's and uvicorn's logging (INFO and up) to `$home/logs/llmos.log`, rotated."""
    directory = log_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # requests' paths are logged: the owner's only
    path = directory / "llmos.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


#: seconds uvicorn waits past the grace before it cancels open requests itself (it answers those with a
#: bare 500): by then the kernel has cancelled them, and each got its own 503 or error event
FORCED_AFTER_S = 3.0


def run(app, *, host: str, port: int, grace: float, header_timeout: float, max_connections: int,
        daemon: tuple[DaemonLock, str] | None = None, on_listen: Callable[[str], None] = lambda _where: None,
        idle_exit: float | None = None, models_loaded: Callable[[], bool] = lambda: False,
        cancel_all: Callable[[], None] = lambda: None) -> None:
    """Serve `app` on host:port, and on the Unix socket of `daemon` (its lock, already held, and the
    socket path) until stopped; `on_listen` is told where, once bound. With `idle_exit`, stop once no
    model is loaded (`models_loaded()` false) and no connection is open for that many seconds. A stop
    gives open requests `grace` seconds, then `cancel_all()` ends what still runs (clients get a 503)."""
    import uvicorn

    from .security import guarded_h11

    # Idle connections stay open 65 s, longer than clients keep them (httpx: 5 s, like uvicorn's own
    # default: a client reusing a connection just as the server drops it got no response at all).
    # A connection must send its request head within --header-timeout (uvicorn alone waits forever).
    config = uvicorn.Config(app, host=host, port=port, log_level="info" if daemon else "warning",
                            timeout_graceful_shutdown=grace + FORCED_AFTER_S, timeout_keep_alive=65,
                            limit_concurrency=max_connections, http=guarded_h11(header_timeout),
                            log_config=None if daemon else uvicorn.config.LOGGING_CONFIG,
                            access_log=bool(daemon))
    server = uvicorn.Server(config)
    app.state.server = server
    app.state.started = time.time()
    sockets = [config.bind_socket()]
    tcp = f"http://{host if ':' not in host else f'[{host}]'}:{sockets[0].getsockname()[1]}"
    app.state.listen = {"tcp": tcp, "socket": None}
    try:
        if daemon is not None:
            lock, path = daemon
            sockets.append(bind_unix(path))
            lock.socket = path
            app.state.listen["socket"] = path
            import llmos

            lock.write_pid_file(DaemonInfo("running", pid=os.getpid(), version=llmos.__version__,
                                           started=app.state.started, tcp=tcp, socket=path))
            logging.getLogger("llmos.daemon").info("llmos %s (pid %d) listening on %s and %s",
                                                   llmos.__version__, os.getpid(), tcp, path)
        if daemon is not None:  # `kill -USR1 PID` writes every thread's stack to logs/stderr.log
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the signal that stopped it once it has: with SIGTERM's default action the
            # process would die there, before the kernel shut down and the pid file was removed. This
            # handler (restored by uvicorn after serving) makes that re-raise a no-op instead.
            signal.signal(signal.SIGTERM, lambda _sig, _frame: setattr(server, "should_exit", True))
        if idle_exit is not None:
            threading.Thread(target=_exit_when_idle, args=(server, idle_exit, models_loaded), daemon=True,
                             name="llmos-idle-exit").start()
        threading.Thread(target=_cancel_after_grace, args=(server, cancel_all), daemon=True,
                         name="llmos-grace").start()
        on_listen(f"{tcp}/v1" + (f" and {app.state.listen['socket']}" if daemon else ""))
        server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def _cancel_after_grace(server, cancel_all: Callable[[], None]) -> None:
    """Once the server is stopping, give open requests their grace (`timeout_graceful_shutdown`, which a
    POST /llmos/shutdown may have changed, less FORCED_AFTER_S), then cancel what still runs."""
    while not server.should_exit:
        time.sleep(0.25)  # at most this late: well inside FORCED_AFTER_S
    time.sleep(max(0.0, (server.config.timeout_graceful_shutdown or 0.0) - FORCED_AFTER_S))
    try:
        cancel_all()
    except Exception:  # noqa: BLE001 - the kernel may be shutting down already
        logging.getLogger("llmos.daemon").exception("cancelling the requests left after the grace failed")


def _exit_when_idle(server, idle_exit: float, models_loaded: Callable[[], bool]) -> None:
    idle_since = time.monotonic()
    while not server.should_exit:
        time.sleep(min(0.25, max(idle_exit, 0.01)))
        if models_loaded() or server.server_state.connections:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_exit:
            logging.getLogger("llmos.daemon").info("idle for %.1f s (no model loaded, no client): exiting", idle_exit)
            server.should_exit = True
