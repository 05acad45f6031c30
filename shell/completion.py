"""Completion for the prompt: command names, then per command models, modules, sessions, tools,
tasks or memfs paths. `suggest(text)` never blocks: candidates come from caches that `refresh()` and
`fetch_dir()` fill from worker threads (the App calls them), so typing never waits on the kernel.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from .commands import CommandSet, is_command


class Completer:
    def __init__(self, commands: CommandSet) -> None:
        self.commands = commands
        self._lock = threading.Lock()
        self._words: dict[str, list[str]] = {"model": [], "module": [], "session": [], "tool": [], "task": []}
        self._dirs: dict[str, list[str]] = {}  # memfs dir -> child paths ("/a/b/" for directories)
        self.wanted_dir: Callable[[str], None] | None = None  # asks the App to fetch a memfs dir

    # -- filling the caches (worker threads) -------------------------------------------------------

    def refresh(self, kernel: Any) -> None:
        words: dict[str, list[str]] = {}
        for key, get in (("model", lambda: [m.name for m in kernel.models()]),
                         ("module", lambda: [m["name"] for m in kernel.modules_info()]),
                         ("session", lambda: [s.get("name") or s["id"] for s in kernel.sessions.list()]),
                         ("tool", lambda: list(kernel.tools.all())),
                         ("task", lambda: list(kernel.tools.tasks))):
            try:
                words[key] = sorted(str(w) for w in get() if w)
            except Exception:  # noqa: BLE001 - e.g. no sessions service: nothing to complete
                words[key] = []
        with self._lock:
            self._words.update(words)

    def fetch_dir(self, kernel: Any, directory: str) -> None:
        try:
            entries = [e["path"] + ("/" if e["type"] == "dir" else "") for e in kernel.mem.ls(directory)]
        except Exception:  # noqa: BLE001 - not a directory, memfs unavailable: nothing to complete
            entries = []
        with self._lock:
            self._dirs[directory] = entries

    def forget_dirs(self) -> None:
        with self._lock:
            self._dirs.clear()

    # -- suggesting (UI thread) --------------------------------------------------------------------

    def suggest(self, text: str) -> str | None:
        """The full completed line for `text`, or None."""
        if not is_command(text) or "\n" in text:
            return None
        prefix, body = text[0], text[1:]
        if " " not in body:
            return _first(prefix, body, self.commands.names(), suffix=" ")
        name, _, arg = body.partition(" ")
        cmd = self.commands.commands.get(name.lower())
        if cmd is None or cmd.complete is None or " " in arg:
            return None
        head = f"{prefix}{name} "
        if cmd.complete == "path":
            return self._suggest_path(head, arg)
        with self._lock:
            words = list(self._words.get(cmd.complete, []))
        return _first(head, arg, words)

    def _suggest_path(self, head: str, arg: str) -> str | None:
        directory = arg.rsplit("/", 1)[0] or "/" if arg.startswith("/") else "/"
        with self._lock:
            entries = self._dirs.get(directory)
        if entries is None:
            if self.wanted_dir is not None:
                self.wanted_dir(directory)
            return None
        return _first(head, arg or "/", entries)


def _first(head: str, typed: str, candidates: list[str], suffix: str = "") -> str | None:
    for cand in candidates:
        if cand.startswith(typed) and cand != typed:
            return head + cand + suffix
    return None
