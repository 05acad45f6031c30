"""Isolation between tenants, for every route that touches a tenant's things.

A tenant sees and kills only its own requests and agents, opens only its own sessions, and reads and
writes only its memfs home (`/home/NAME`) plus, for reading, the directories shared with it (`keys add
--read DIR`). Admin tenants (the owner, the --api-key holder, `--admin` keys) see all. Every refusal is
a 403 (`TenantDeniedError`) and is written to the audit log (`kernel.tenants.deny`).
"""

from __future__ import annotations

from typing import Any

from llmos.kernel.errors import TenantDeniedError
from llmos.kernel.memfs.paths import normalize
from llmos.kernel.tenants.tenant import Tenant

from .security import tenant_of


def deny(kernel, tenant: Tenant, action: str, target: str, message: str, param: str | None = None):
    kernel.tenants.deny(tenant, action, target, message)
    return TenantDeniedError(message, param=param)


def require_admin(kernel, request, action: str, target: str = "") -> Tenant:
    tenant = tenant_of(request)
    if not tenant.admin:
        raise deny(kernel, tenant, action, target, f"{action} needs an admin key (tenant {tenant.name!r} is not an "
                                                   f"admin)")
    return tenant


def check_owner(kernel, request, owner: str | None, action: str, target: str, param: str | None = None) -> Tenant:
    """The request's tenant, if `owner` (a request's, an agent's, a session's tenant) is it or it is an admin."""
    tenant = tenant_of(request)
    if not tenant.admin and owner != tenant.name:
        raise deny(kernel, tenant, action, target, f"{target} belongs to another tenant: tenant {tenant.name!r} may "
                                                   f"{action} only its own", param)
    return tenant


def visible(request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows (ps, sessions) the request's tenant may see."""
    tenant = tenant_of(request)
    return rows if tenant.admin else [r for r in rows if r.get("owner") == tenant.name]


def readable(kernel, request, path: str, action: str, param: str = "path") -> str:
    tenant = tenant_of(request)
    path = normalize(path, param=param)
    if not tenant.may_read(path):
        raise deny(kernel, tenant, action, path, f"tenant {tenant.name!r} reads memfs under {tenant.home} (and what is "
                                                 f"shared with it: {', '.join(tenant.shared) or 'nothing'}), not {path}",
                   param)
    return path


def writable(kernel, request, path: str, action: str, param: str = "path") -> str:
    tenant = tenant_of(request)
    path = normalize(path, param=param)
    if not tenant.may_write(path):
        raise deny(kernel, tenant, action, path, f"tenant {tenant.name!r} writes memfs under {tenant.home} only, "
                                                 f"not {path}", param)
    return path


def search_roots(kernel, request, within: str, action: str) -> list[str]:
    """Where a search `within` a directory may look: the directory itself if readable, else the
    tenant's readable roots under it (a search of "/" by a tenant covers its home and shares)."""
    tenant = tenant_of(request)
    within = normalize(within, param="within")
    if tenant.may_read(within):
        return [within]
    prefix = within.rstrip("/") + "/"
    roots = [r for r in (tenant.home, *tenant.shared) if r.startswith(prefix)]
    if not roots:
        readable(kernel, request, within, action, "within")  # raises, audited
    return roots


def listing(request, path: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of a directory above the tenant's roots: only those leading to them."""
    tenant = tenant_of(request)
    if tenant.may_read(path):
        return entries
    roots = (tenant.home, *tenant.shared)
    return [e for e in entries if any(r == e["path"] or r.startswith(e["path"].rstrip("/") + "/") or
                                      tenant.may_read(e["path"]) for r in roots)]
