"""The shell in a real terminal: `llmos shell` inside tmux at 80x24, a prompt typed with send-keys,
the streamed reply read back with capture-pane. By default the shell attaches to the resident kernel,
starting it when none is up (and it stays up after the shell quits); `--local` boots one in process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from llmos.benchmarks.tmux import tmux, wait_screen
from llmos.shell.attach import ATTACHED_NICE

from .test_daemon import Daemon
from .util import LLMOS

pytestmark = [pytest.mark.cli, pytest.mark.model]

NO_TMUX = "tmux is not installed: install it (apt-get install tmux, brew install tmux); `make test` does it as root"


def _shell_process(pane_pid: int) -> int:
    """The `llmos shell` process: the pane's process, or its descendant when a shell runs the command."""
    family, found = {pane_pid}, True
    while found:
        found = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid in family and pid not in family:
                family.add(pid)
                found = True
    shells = [pid for pid in family if b"shell" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    assert len(shells) == 1, shells
    return shells[0]


def _nice(pid: int) -> set[int]:
    """The niceness of each thread of a process (Linux keeps one per thread): field 19 of its stat."""
    tasks = Path(f"/proc/{pid}/task")
    return {int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in tasks.iterdir()}


@pytest.mark.parametrize("mode", ["resident", "local"])
def test_shell_answers_in_a_real_terminal(tmp_path, mode):
    assert shutil.which("tmux"), NO_TMUX  # a missing dependency fails the suite, never skips it
    session = f"llmos-test-{uuid.uuid4().hex[:8]}"
    # the shell sends no sampling of its own: greedy through the model's table, so the answer is known
    (tmp_path / "llmos.toml").write_text("[models.smollm2]\ntemperature = 0.0\nrepetition_penalty = 1.0\n")
    env = {**{k: v for k, v in os.environ.items() if k.startswith(("LLMOS_", "HF_"))}, "LLMOS_HOME": str(tmp_path)}
    local = ["--local"] if mode == "local" else []
    command = " ".join(["env", *[f"{k}={v}" for k, v in env.items()], "TERM=xterm-256color", LLMOS, "shell", "--new",
                        *local])
    daemon = Daemon(tmp_path)
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", command)
    try:
        screen = wait_screen(session, lambda s: "ready" in s, 60)
        assert "esc Cancel" in screen and "llmos" in screen.splitlines()[0]
        tmux("send-keys", "-t", session, "-l", "What is the capital of France?")
        tmux("send-keys", "-t", session, "Enter")
        screen = wait_screen(session, lambda s: "reply done" in s or "reply failed" in s, 90)
        assert "reply done" in screen, screen
        screen = wait_screen(session, lambda s: "What is the capital of France?" in s, 10)  # drawn by now
        assert "Paris" in screen, screen
        if mode == "resident":  # the shell draws at a lower priority than the kernel decodes
            shell_pid = _shell_process(int(tmux("display-message", "-p", "-t", session, "#{pane_pid}").strip()))
            daemon_pid = daemon.remember()["pid"]
            ours = os.getpriority(os.PRIO_PROCESS, 0)  # what the daemon and the shell started with
            assert _nice(daemon_pid) == {ours} and _nice(shell_pid) == {max(ours, ATTACHED_NICE)}, \
                (_nice(daemon_pid), _nice(shell_pid))
        tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 20
        while session in tmux("ls") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session not in tmux("ls"), "ctrl+q did not leave the shell"
        status = daemon.llmos("status", "--json")
        if mode == "local":
            assert status.returncode == 3, status.stdout  # no daemon was started
            return
        assert status.returncode == 0, status.stderr  # the shell started it, and it outlives the shell
        [chat] = [s for s in json.loads(daemon.llmos("sessions", "ls", "--json").stdout) if s["kind"] == "chat"]
        assert chat["messages"] == 2  # the shell's turn, stored by the resident kernel
        assert daemon.llmos("down").returncode == 0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
        daemon.kill_all()
