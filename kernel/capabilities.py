"""Capabilities and the audit log: which tool may do what, and a record of every call.

Grants come from llmos.toml:

    [capabilities]
    grant = ["memfs.read"]               # granted to every tool
    [capabilities.tools]
    fetch_page = ["net"]                 # granted to one tool
    [capabilities.plugins]
    myplugin = ["fs.read", "fs.write"]   # granted to every tool of one plugin

A call needing a capability that is not granted is denied with `ToolDeniedError`, unless the caller
passes an approver (the interactive shell asks the user: allow once / always / deny). Every call —
who, tool, arguments, capability decision, outcome, duration — is appended to
`$LLMOS_HOME/audit.jsonl`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from .errors import ConfigError, LlmosError

Decision = Literal["once", "always", "deny"]
#: approve(tool_name, missing_capabilities) -> "once" | "always" | "deny"
Approver = Callable[[str, frozenset[str]], Decision]


class ToolDeniedError(LlmosError, PermissionError):
    code = "capability_denied"

    def __init__(self, tool: str, missing: frozenset[str]) -> None:
        caps = ", ".join(sorted(missing))
        super().__init__(f"tool {tool!r} needs capability {caps}, which is not granted: add it under "
                         f"[capabilities] in llmos.toml (grant, tools.{tool} or plugins.<plugin>)")
        self.tool = tool
        self.missing = missing


def _strings(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} in llmos.toml must be a list of capability strings")
    return frozenset(value)


class Grants:
    def __init__(self, section: Mapping[str, Any] | None) -> None:
        section = dict(section or {})
        self.everyone = _strings(section.get("grant", []), "[capabilities] grant")
        self.tools = {k: _strings(v, f"[capabilities.tools] {k}") for k, v in dict(section.get("tools", {})).items()}
        self.plugins = {k: _strings(v, f"[capabilities.plugins] {k}")
                        for k, v in dict(section.get("plugins", {})).items()}
        self._always: dict[str, set[str]] = {}  # "always" answers given during this kernel's life
        self._lock = threading.Lock()

    def granted(self, tool: str, plugin: str) -> frozenset[str]:
        with self._lock:
            extra = frozenset(self._always.get(tool, ()))
        return self.everyone | self.tools.get(tool, frozenset()) | self.plugins.get(plugin, frozenset()) | extra

    def remember(self, tool: str, caps: frozenset[str]) -> None:
        with self._lock:
            self._always.setdefault(tool, set()).update(caps)

    def decide(self, tool: str, plugin: str, needed: frozenset[str], approve: Approver | None) -> str:
        """"granted", "approved" or "approved-always"; raises ToolDeniedError."""
        missing = needed - self.granted(tool, plugin)
        if not missing:
            return "granted"
        answer = approve(tool, missing) if approve is not None else "deny"
        if answer == "always":
            self.remember(tool, missing)
            return "approved-always"
        if answer == "once":
            return "approved"
        raise ToolDeniedError(tool, missing)


class AuditLog:
    def __init__(self, path: Path, redact: Callable[[str], str] = lambda line: line) -> None:
        self.path = path
        self._redact = redact  # maskers never emit quotes or backslashes: the line stays valid JSON
        self._lock = threading.Lock()

    def record(self, **entry: Any) -> None:
        line = self._redact(json.dumps({"ts": time.time(), **entry}, default=repr))
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a crash is skipped, not fatal
        return rows[-limit:] if limit else rows
