"""The kernel the shell runs on: the resident one (`llmos up`), started detached when none is up, or
an in-process one with `llmos shell --local`.

A daemon the shell starts listens on its Unix socket and a free TCP port, and exits once it has had
no model loaded and no client for AUTO_IDLE_EXIT (models themselves unload after their keep_alive),
so closing the last shell frees the machine without anyone running `llmos down`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .pacing import FAST_HZ

#: how long a daemon the shell started stays up with no model loaded and no client
AUTO_IDLE_EXIT = "5m"
#: the niceness an attached shell draws at: on a machine whose cores all decode, drawing takes what
#: decoding leaves instead of an equal share (the kernel is another process, at its own priority)
ATTACHED_NICE = 10
#: the cadence an attached shell asks its reply streams at (the HTTP extension `stream_interval_ms`):
#: its fastest frame rate (shell/pacing.py), so it reads text no more often than it can draw it
STREAM_INTERVAL_MS = round(1000 / FAST_HZ)


def shell_kernel(home: str | None, *, local: bool, say: Callable[[str], None] = lambda _text: None) -> Any:
    """A `KernelAPI`: booted here (`local`), LLMOS_URL's server, or the resident kernel of `home`."""
    import llmos

    if local:
        return llmos.boot(home=home)
    if os.environ.get("LLMOS_URL"):
        return llmos.connect(stream_interval_ms=STREAM_INTERVAL_MS)
    from llmos.kernel.config import default_home

    from . import daemon

    where = Path(home).expanduser() if home else default_home()
    if daemon.daemon_address(where).state != "running":
        say("starting the resident kernel (llmos up)...")
        daemon.start(where, port=0, idle_exit=AUTO_IDLE_EXIT)
    return llmos.connect(home=where, stream_interval_ms=STREAM_INTERVAL_MS)


def yield_cores_to_the_kernel() -> None:
    """Lower every thread of this (attached shell) process to ATTACHED_NICE, once its kernel is up: Linux
    keeps a niceness per thread, and threads started later inherit it. Never raises the priority, and
    is called after the daemon was started, so the kernel does not inherit it."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process's niceness is the threads' too
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), ATTACHED_NICE))
        except OSError:
            pass  # a thread that ended meanwhile, or a platform without it: drawing still works
