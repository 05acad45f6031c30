"""memfs as one tenant sees it, for every caller that acts for a tenant: the HTTP routes
(shell/server/mem_routes.py) and the tools an agent of that tenant calls (`TenantView`).

A tenant reads its home (`/home/NAME`) and the directories shared with it, and writes its home only; a
search, grep or listing of a directory above those covers exactly what it may read. Admins see all.
Every refusal is audited (`TenantTable.deny`) and raised as `TenantDeniedError` (403 over HTTP).
"""

from __future__ import annotations

from typing import Any

from ..errors import TenantDeniedError
from .tenant import Tenant


def _normalize(path: str, param: str) -> str:
    from ..memfs.paths import normalize  # memfs's package loads numpy: only when a path is checked

    return normalize(path, param=param)


class ScopedMem:
    """`kernel.mem`'s operations for `tenant`, each path checked first; what is not a per-path
    operation (volumes, mount, import, fsck) is an admin's."""

    def __init__(self, mem: Any, tenant: Tenant, table: Any) -> None:
        self._mem, self.tenant, self._table = mem, tenant, table

    # -- the checks ----------------------------------------------------------------------------------

    def _deny(self, action: str, target: str, message: str, param: str | None) -> TenantDeniedError:
        self._table.deny(self.tenant, action, target, message)
        return TenantDeniedError(message, param=param)

    def readable(self, path: str, action: str, param: str = "path") -> str:
        path = _normalize(path, param)
        if not self.tenant.may_read(path):
            shared = ", ".join(self.tenant.shared) or "nothing"
            raise self._deny(action, path, f"tenant {self.tenant.name!r} reads memfs under {self.tenant.home} (and "
                                           f"what is shared with it: {shared}), not {path}", param)
        return path

    def writable(self, path: str, action: str, param: str = "path") -> str:
        path = _normalize(path, param)
        if not self.tenant.may_write(path):
            raise self._deny(action, path, f"tenant {self.tenant.name!r} writes memfs under {self.tenant.home} "
                                           f"only, not {path}", param)
        return path

    def roots(self, within: str, action: str) -> list[str]:
        """Where a search `within` a directory may look: the directory if readable, else the tenant's
        readable roots below it that exist (a search of "/" covers its home and shares)."""
        within = _normalize(within, "within")
        if self.tenant.may_read(within):
            return [within]
        prefix = within.rstrip("/") + "/"
        below = [r for r in (self.tenant.home, *self.tenant.shared) if r.startswith(prefix)]
        if not below:
            self.readable(within, action, "within")  # raises, audited
        return [r for r in below if self._exists(r)]

    def _exists(self, path: str) -> bool:
        try:
            self._mem.stat(path)
        except FileNotFoundError:
            return False
        return True

    # -- reading -------------------------------------------------------------------------------------

    def cat(self, path: str) -> str:
        return self._mem.cat(self.readable(path, "mem cat"))

    def stat(self, path: str) -> dict[str, Any]:
        return self._mem.stat(self.readable(path, "mem stat"))

    def ls(self, path: str = "/", recursive: bool = False) -> list[dict[str, Any]]:
        path = _normalize(path, "path")
        self.roots(path, "mem ls")  # readable, or above what is (then filtered below)
        entries = self._mem.ls(path, recursive)
        if self.tenant.may_read(path):
            return entries
        roots = (self.tenant.home, *self.tenant.shared)
        shown = []
        for e in entries:
            if self.tenant.may_read(e["path"]):
                shown.append(e)
            elif any(r.startswith(e["path"].rstrip("/") + "/") for r in roots):  # above what it may read: the
                shown.append({**e, "size": 0, "files": 0, "mtime": 0.0})  # way there, never others' figures
        return shown

    def find(self, query: str, within: str = "/", k: int = 5) -> list[dict[str, Any]]:
        prio = self.tenant.priority(None)  # the query's embedding waits its tenant's turn, not ahead of all
        hits = [h for root in self.roots(within, "mem find") for h in self._mem.find(query, root, k, priority=prio)]
        return sorted(hits, key=lambda h: -h["score"])[:k]

    def grep(self, pattern: str, within: str = "/", ignore_case: bool = False, *args: Any) -> list[dict[str, Any]]:
        return [h for root in self.roots(within, "mem grep") for h in self._mem.grep(pattern, root, ignore_case, *args)]

    # -- writing -------------------------------------------------------------------------------------

    def write(self, path: str, text: str, **meta: Any) -> dict[str, Any]:
        return self._mem.write(self.writable(path, "mem write"), text, **meta)

    def append(self, path: str, text: str) -> dict[str, Any]:
        return self._mem.append(self.writable(path, "mem append"), text)

    def mv(self, src: str, dst: str) -> None:
        return self._mem.mv(self.writable(src, "mem mv", "src"), self.writable(dst, "mem mv", "dst"))

    def rm(self, path: str, recursive: bool = False) -> int:
        return self._mem.rm(self.writable(path, "mem rm"), recursive)

    def __getattr__(self, name: str) -> Any:
        if self.tenant.admin:
            return getattr(self._mem, name)
        raise self._deny(f"mem {name}", name, f"mem.{name} needs an admin key (tenant {self.tenant.name!r} is not "
                                              f"an admin)", None)


#: the kernel's methods that a tool called for a tenant gets bound to the view: they submit through it
_SUBMITTING = frozenset({"generate", "chat", "stream", "agenerate", "achat", "astream"})


class TenantView:
    """The kernel as a tool called for `tenant` sees it: its memfs is `ScopedMem`, its requests and tool
    calls are the tenant's (its class, quotas and fair share), and nothing else of the kernel is there
    (processes, sessions, modules and the rest belong to the machine: an AttributeError names the rule)."""

    def __init__(self, kernel: Any, tenant: Tenant) -> None:
        self._kernel, self.tenant = kernel, tenant

    @property
    def mem(self) -> ScopedMem:
        return ScopedMem(self._kernel.mem, self.tenant, self._kernel.tenants)

    def submit(self, *args: Any, **kwargs: Any):
        kwargs["tenant"] = self.tenant
        return self._kernel.submit(*args, **kwargs)

    def call_tool(self, name: str, args: Any, **kwargs: Any):
        kwargs["tenant"] = self.tenant
        return self._kernel.call_tool(name, args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in _SUBMITTING:  # the kernel's own method, whose `self.submit` is this view's
            return getattr(type(self._kernel), name).__get__(self)
        raise AttributeError(f"a tool called for tenant {self.tenant.name!r} gets the kernel's mem, submit, "
                             f"{', '.join(sorted(_SUBMITTING))} and call_tool, not {name!r}")
