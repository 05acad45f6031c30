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
`$LLMOS_HOME/audit.jsonl`, its strings masked by the kernel's redactors before it is serialized
(kernel/lib/masking.py). Retention (`[audit]` in llmos.toml, defaults in kernel/config.py): entries
older than `max_age_days` are dropped when the log is opened and hourly while it is written, and
when the file passes `max_bytes` the oldest entries go until it is under three quarters of it. The
rewrite (temporary file + rename) and every append hold an advisory lock on `audit.jsonl.lock`,
so kernels in several processes sharing a home lose no entry; a rewrite that fails (a full disk)
leaves the log as it was, is logged, and is tried again later.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

from ..errors import ConfigError, LlmosError
from ..lib.masking import dumps_redacted

log = logging.getLogger("llmos.audit")

try:
    import fcntl
except ImportError:  # Windows: appends and rewrites are locked within this process only
    fcntl = None  # type: ignore[assignment]

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
    #: seconds between two age-based prunes while the log is written
    PRUNE_EVERY_S = 3600.0

    def __init__(self, path: Path, redact: Callable[[str], str] = lambda text: text, *,
                 max_age_days: float = 0, max_bytes: int = 0) -> None:
        self.path = path
        self._redact = redact
        self.max_age_s = max_age_days * 86400.0  # 0: no age limit
        self.max_bytes = max_bytes  # 0: no size limit
        self._lock = threading.Lock()
        self._size = 0
        self._pruned_at = 0.0
        self.prune()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fcntl is None:
                yield
                return
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield

    def record(self, **entry: Any) -> None:
        line = dumps_redacted({"ts": time.time(), **entry}, self._redact)
        with self._locked():
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                self._size = fh.tell()
        due = self.max_age_s and time.monotonic() - self._pruned_at > self.PRUNE_EVERY_S
        if due or (self.max_bytes and self._size > self.max_bytes):
            self.prune()

    def prune(self) -> int:
        """Apply retention now; returns how many entries were dropped."""
        if not (self.max_age_s or self.max_bytes) or not self.path.exists():
            return 0
        with self._locked():
            self._pruned_at = time.monotonic()
            try:
                with open(self.path, encoding="utf-8", errors="replace") as fh:  # appended oldest first:
                    self._size = os.fstat(fh.fileno()).st_size  # a young first one means all are young
                    if (not self.max_bytes or self._size <= self.max_bytes) and self._young(fh.readline()):
                        return 0
                lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            except FileNotFoundError:
                return 0
            keep = [line for line in lines if self._young(line)]
            size = sum(len(line.encode()) for line in keep)
            if self.max_bytes and size > self.max_bytes:
                target, first = self.max_bytes * 3 // 4, 0
                while first < len(keep) and size > target:
                    size -= len(keep[first].encode())
                    first += 1
                keep = keep[first:]
            self._size = size
            if len(keep) == len(lines):
                return 0
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.writelines(keep)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:  # e.g. a full disk: the log stays as it was, the next prune retries
                tmp.unlink(missing_ok=True)
                log.warning("could not prune the audit log %s: %s; it was left as it was", self.path, exc)
                return 0
            return len(lines) - len(keep)

    def _young(self, line: str) -> bool:
        """Whether an entry is within max_age (a line that is not an entry, e.g. torn by a crash, goes)."""
        try:
            ts = json.loads(line)["ts"]
        except (ValueError, KeyError, TypeError):
            return False
        return not self.max_age_s or (isinstance(ts, (int, float)) and time.time() - ts <= self.max_age_s)

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
