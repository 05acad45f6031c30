"""Driving a real terminal for the shell's benchmarks and tests: tmux commands and waiting on its screen."""

from __future__ import annotations

import subprocess
import time
from typing import Callable


def tmux(*args: str) -> str:
    """Run one tmux command; its standard output."""
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10).stdout


def wait_screen(session: str, ok: Callable[[str], bool], timeout: float, *, join: bool = False,
                poll: float = 0.2) -> str:
    """The session's screen once `ok(screen)` holds (`join`: wrapped lines joined), read every `poll`
    seconds; TimeoutError with the last screen after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", *(["-J"] if join else []), "-t", session)
        if ok(screen):
            return screen
        time.sleep(poll)
    raise TimeoutError(f"the screen did not get there in {timeout:.0f} s; it was:\n{screen}")
