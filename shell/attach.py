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

#: how long a daemon the shell started stays up with no model loaded and no client
AUTO_IDLE_EXIT = "5m"


def shell_kernel(home: str | None, *, local: bool, say: Callable[[str], None] = lambda _text: None) -> Any:
    """A `KernelAPI`: booted here (`local`), LLMOS_URL's server, or the resident kernel of `home`."""
    import llmos

    if local:
        return llmos.boot(home=home)
    if os.environ.get("LLMOS_URL"):
        return llmos.connect()
    from llmos.kernel.config import default_home

    from . import daemon

    where = Path(home).expanduser() if home else default_home()
    if daemon.daemon_address(where).state != "running":
        say("starting the resident kernel (llmos up)...")
        daemon.start(where, port=0, idle_exit=AUTO_IDLE_EXIT)
    return llmos.connect(home=where)
