"""The parts of the kernel a `Client` reaches as attributes, each over its HTTP routes: `config`,
`registry`, `tools` (tools, tasks, MCP errors, the audit log), `module_store`, `mem` (memfs) and
`sessions` (with `RemoteSession`, a stored conversation). Same methods and return shapes as the
in-process objects, so the shell and the CLI use either unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

from llmos.kernel.errors import LlmosError
from llmos.kernel.memfs.grep import GREP_TIMEOUT_S
if TYPE_CHECKING:  # imported when used: a client starts without the module store's imports
    from llmos.kernel.modules.store import Manifest

from .transport import Transport, events, q, typed_error


@dataclass(frozen=True)
class ClientConfig:
    default_model: str
    home: str | None = None


class RemoteRegistry:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def resolve(self, name_or_path: str, *, allow_paths: bool = True) -> SimpleNamespace:
        """The served model's name, format, source and location (a path resolves for the owner only)."""
        return SimpleNamespace(**self._t.call("GET", "/llmos/models/resolve", params={"name": name_or_path}))


@dataclass(frozen=True)
class _Described:
    """A tool or task as the server lists it (`as_dict()` gives the row back)."""

    name: str
    description: str
    schema: dict[str, Any]
    plugin: str | None
    capabilities: tuple[str, ...] = ()
    row: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, row: dict[str, Any]) -> "_Described":
        return cls(row["name"], row.get("description") or "", row.get("schema") or {}, row.get("plugin"),
                   tuple(row.get("capabilities") or ()), row)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.row)


class RemoteTools:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def all(self) -> dict[str, _Described]:
        return {row["name"]: _Described.of(row) for row in self._t.call("GET", "/llmos/tools")["tools"]}

    @property
    def mcp(self) -> SimpleNamespace:
        """`mcp.errors`: MCP servers that failed to start, with why."""
        return SimpleNamespace(errors=self._t.call("GET", "/llmos/tools").get("mcp_errors") or {})

    @property
    def tasks(self) -> dict[str, _Described]:
        return {row["name"]: _Described.of(row) for row in self._t.call("GET", "/llmos/tasks")}

    @property
    def audit(self) -> SimpleNamespace:
        return SimpleNamespace(read=lambda limit=None: self._t.call("GET", "/llmos/admin/audit",
                                                                   params={"limit": limit or 0}))


def manifest(row: dict[str, Any]) -> Manifest:
    """A module's manifest from its JSON row (fields a newer server adds are left out)."""
    from llmos.kernel.modules.store import Manifest

    return Manifest(**{k: v for k, v in row.items() if k in Manifest.__dataclass_fields__})


class RemoteModuleStore:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def list(self) -> list[Manifest]:
        return [manifest(row) for row in self._t.call("GET", "/llmos/modules")]

    def base_of(self, name: str) -> str | None:
        """The base model of installed module `name` (None when there is none: the server says so)."""
        return next((m.base_model for m in self.list() if m.name == name), None)

    def remove(self, name: str) -> None:
        self._t.call("DELETE", f"/llmos/admin/modules/{q(name)}")


class RemoteMem:
    """memfs of the resident kernel (shell/server/mem_routes.py)."""

    def __init__(self, t: Transport) -> None:
        self._t = t

    def write(self, path: str, text: str, *, tags: list[str] | None = None, source: str | None = None,
              **_meta: Any) -> dict[str, Any]:
        return self._t.call("PUT", "/llmos/mem/write", json={"path": path, "text": text, "tags": list(tags or []),
                                                            "source": source})

    def append(self, path: str, text: str) -> dict[str, Any]:
        return self._t.call("POST", "/llmos/mem/append", json={"path": path, "text": text})

    def cat(self, path: str) -> str:
        return self._t.call("GET", "/llmos/mem/cat", params={"path": path})["text"]

    def stat(self, path: str) -> dict[str, Any]:
        return self._t.call("GET", "/llmos/mem/stat", params={"path": path})

    def ls(self, path: str = "/", recursive: bool = False) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/mem/ls", params={"path": path, "recursive": recursive})

    def mv(self, src: str, dst: str) -> None:
        self._t.call("POST", "/llmos/mem/mv", json={"src": src, "dst": dst})

    def rm(self, path: str, recursive: bool = False) -> int:
        return self._t.call("DELETE", "/llmos/mem/rm", params={"path": path, "recursive": recursive})["removed"]

    def find(self, query: str, within: str = "/", k: int = 5) -> list[dict[str, Any]]:
        return self._t.call("POST", "/llmos/mem/find", json={"query": query, "within": within, "k": k})

    def grep(self, pattern: str, within: str = "/", ignore_case: bool = False,
             timeout: float = GREP_TIMEOUT_S) -> list[dict[str, Any]]:
        return self._t.call("POST", "/llmos/mem/grep", json={"pattern": pattern, "within": within,
                                                            "ignore_case": ignore_case, "timeout": timeout})

    def volumes(self) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/mem/volumes")

    def mount(self, name: str) -> str:
        return self._t.call("POST", f"/llmos/admin/mem/mount/{q(name)}")["at"]

    def fsck(self, repair: bool = False) -> list[dict[str, Any]]:
        return self._t.call("POST", "/llmos/admin/mem/fsck", params={"repair": repair})

    def snapshot(self, volume: str, name: str | None = None) -> dict[str, Any]:
        return self._t.call("POST", f"/llmos/admin/mem/snapshots/{q(volume)}", json={"name": name})

    def snapshots(self, volume: str | None = None) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/admin/mem/snapshots", params={} if volume is None else {"volume": volume})

    def rollback(self, volume: str, name: str) -> dict[str, Any]:
        return self._t.call("POST", f"/llmos/admin/mem/snapshots/{q(volume)}/{q(name)}/rollback")

    def delete_snapshot(self, volume: str, name: str) -> None:
        self._t.call("DELETE", f"/llmos/admin/mem/snapshots/{q(volume)}/{q(name)}")

    def import_dir(self, source: str, to: str, progress: Callable[[int, int], None] | None = None, *,
                   hidden: bool = False, max_bytes: int | None = None, **_ignored: Any) -> dict[str, Any]:
        """Import a directory of this machine (the server reads it: the owner's only), with progress."""
        from pathlib import Path

        body = {"source": str(Path(source).resolve()), "to": to, "hidden": hidden, "max_bytes": max_bytes}
        with self._t.stream("POST", "/llmos/admin/mem/import", json=body) as r:
            for obj in events(r):
                if "result" in obj:
                    return obj["result"]
                if "error" in obj:
                    raise typed_error(obj, 400)
                if progress is not None:
                    progress(obj["done"], obj["total"])
        raise LlmosError(f"the import into {to} ended without a result: see `llmos logs`")


class RemoteSession:
    """One stored conversation of the resident kernel; attributes reflect its row."""

    def __init__(self, t: Transport, row: dict[str, Any]) -> None:
        self._t = t
        self._load(row)

    def _load(self, row: dict[str, Any]) -> None:
        self.id: str = row["id"]
        for key in ("name", "kind", "model", "adapter", "system", "state", "title"):
            setattr(self, key, row.get(key))
        self.settings: dict[str, Any] = row.get("settings") or {}

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self._t.call("GET", f"/llmos/sessions/{q(self.id)}")["messages"]

    def append(self, message: dict[str, Any]) -> None:
        self._t.call("POST", f"/llmos/sessions/{q(self.id)}/messages", content=json.dumps(message, default=str),
                     headers={"Content-Type": "application/json"})

    def update(self, **settings: Any) -> None:
        self._load(self._t.call("PATCH", f"/llmos/sessions/{q(self.id)}", json=settings))

    def set_state(self, state: str) -> None:
        self.update(state=state)

    def as_dict(self) -> dict[str, Any]:
        return self._t.call("GET", f"/llmos/sessions/{q(self.id)}")


class RemoteSessions:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self._t.call("GET", "/llmos/sessions", params={"kind": kind} if kind else None)

    def last(self, kind: str = "chat") -> dict[str, Any] | None:
        rows = self.list(kind)
        return rows[0] if rows else None

    def get(self, name_or_id: str) -> RemoteSession:
        return RemoteSession(self._t, self._t.call("GET", f"/llmos/sessions/{q(name_or_id)}"))

    def open(self, name_or_id: str | None = None, *, model: str | None = None, adapter: str | None = None,
             system: str | None = None) -> RemoteSession:
        return RemoteSession(self._t, self._t.call("POST", "/llmos/sessions", json={
            "name": name_or_id, "model": model, "adapter": adapter, "system": system}))

    def export(self, name_or_id: str, fmt: str = "md") -> str:
        return self._t.call("GET", f"/llmos/sessions/{q(name_or_id)}", params={"format": fmt})["text"]

    def delete(self, name_or_id: str) -> None:
        self._t.call("DELETE", f"/llmos/sessions/{q(name_or_id)}")
