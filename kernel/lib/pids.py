"""Whether a process id is a live process (no kernel state): for files a process leaves behind (pid files,
sessions marked running, swap folders) whose owner may have crashed."""

from __future__ import annotations

import os


def pid_alive(pid: int | None) -> bool:
    """True if `pid` is a running process (one of another user counts: it exists)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
