"""Isolation between tenants, for every route that touches a tenant's things.

A tenant sees and kills only its own requests and agents, opens only its own sessions, and reads and
writes only its memfs home (`/home/NAME`) plus, for reading, the directories shared with it (`keys add
--read DIR`). Admin tenants (the owner, the --api-key holder, `--admin` keys) see all. Every refusal is
a 403 (`TenantDeniedError`) and is written to the audit log (`kernel.tenants.deny`).
"""

from __future__ import annotations

from typing import Any

from llmos.kernel.errors import TenantDeniedError
from llmos.kernel.tenants.tenant import Tenant

from .security import tenant_of

#: what the tools of a non-admin tenant's agents may need (memfs is scoped to the tenant: scope.py)
TENANT_TOOL_CAPABILITIES = frozenset({"memfs.read", "memfs.write"})


def deny(kernel, tenant: Tenant, action: str, target: str, message: str, param: str | None = None,
         code: str | None = None):
    """Audit a refusal and return its error (403; `code`: e.g. admin_only)."""
    kernel.tenants.deny(tenant, action, target, message)
    error = TenantDeniedError(message, param=param)
    if code is not None:
        error.code = code
    return error


def require_admin(kernel, request, action: str, target: str = "") -> Tenant:
    tenant = tenant_of(request)
    if not tenant.admin:
        raise deny(kernel, tenant, action, target, f"{action} needs an admin key (tenant {tenant.name!r} is not an "
                                                   f"admin)", code="admin_only")
    return tenant


def check_owner(kernel, request, owner: str | None, action: str, target: str, param: str | None = None) -> Tenant:
    """The request's tenant, if `owner` (a request's, an agent's, a session's tenant) is it or it is an admin."""
    tenant = tenant_of(request)
    if not tenant.admin and owner != tenant.name:
        raise deny(kernel, tenant, action, target, f"{target} belongs to another tenant: tenant {tenant.name!r} may "
                                                   f"{action} only its own", param)
    return tenant


def own_session(kernel, request, session: str, action: str):
    """The stored session, if it is the request's tenant's (or the tenant is an admin); another tenant's
    is refused (audited) as if it did not exist: its name or id says nothing."""
    from llmos.kernel.proc.sessions import UnknownSessionError

    stored = kernel.sessions.get(session)
    tenant = tenant_of(request)
    if not tenant.admin and stored.owner != tenant.name:
        kernel.tenants.deny(tenant, action, f"session {session}", "another tenant's session")
        raise UnknownSessionError(f"no session {session!r}: `llmos sessions ls` lists yours")
    return stored


def visible(request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows (ps, sessions) the request's tenant may see."""
    tenant = tenant_of(request)
    return rows if tenant.admin else [r for r in rows if r.get("owner") == tenant.name]


def agent_tools(kernel, tenant: Tenant, asked: list[str] | None) -> list[str] | None:
    """The tools `tenant`'s agent may use: an admin's, any; another tenant's, only those needing nothing
    beyond its (scoped) memfs. The operator's [capabilities] grants, plugins' and MCP servers' tools (files,
    network) are the machine's, not every tenant's: asking for one is a 403, audited."""
    if tenant.admin:
        return asked
    catalog = kernel.tools.all()
    allowed = sorted(n for n, t in catalog.items() if t.capabilities <= TENANT_TOOL_CAPABILITIES)
    refused = [n for n in (asked or ()) if n in catalog and n not in allowed]
    if refused:
        raise deny(kernel, tenant, "agent tools", ",".join(refused), f"tools {refused} need capabilities beyond "
                   f"memfs; tenant {tenant.name!r} may give its agents {allowed}", param="tools", code="admin_only")
    return allowed if asked is None else asked
