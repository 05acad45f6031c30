"""The kernel's live view of tenants (`kernel.tenants`): limits applied in `submit`, usage counted as
requests end, denials audited.

Usage is kept for at most `MAX_TENANTS` names (tenants are made by an admin, so a real deployment has
far fewer); beyond that the rest count under "other", so neither memory nor metrics labels grow
without bound.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable

from .quota import Limits
from .tenant import OWNER_TENANT, Tenant

MAX_TENANTS = 256
OTHER = "other"
FIELDS = ("requests", "prompt_tokens", "completion_tokens", "throttled", "denied", "failed")


class TenantTable:
    def __init__(self, audit: Callable[..., None] | None = None) -> None:
        self.limits = Limits()
        self._audit = audit or (lambda **_entry: None)
        self._lock = threading.Lock()
        self._usage: dict[str, Counter[str]] = {}
        self._policies: dict[str, Tenant] = {OWNER_TENANT.name: OWNER_TENANT}
        self._reserved: dict[str, tuple[str, int]] = {}  # request id -> (tenant, tokens reserved)

    def label(self, name: str) -> str:
        """`name`, or "other" once MAX_TENANTS names are tracked (bounded metrics labels)."""
        with self._lock:
            return self._label(name)

    def _label(self, name: str) -> str:
        if name in self._usage or len(self._usage) < MAX_TENANTS:
            self._usage.setdefault(name, Counter())
            return name
        self._usage.setdefault(OTHER, Counter())
        return OTHER

    def _count(self, name: str, **amounts: int) -> None:
        with self._lock:
            self._usage[self._label(name)].update(amounts)

    # -- in submit ---------------------------------------------------------------------------------

    def admit(self, tenant: Tenant, rid: str, prompt_tokens: int, max_tokens: int) -> None:
        """Apply `tenant`'s quota and concurrency to a new request (QuotaExceededError: 429)."""
        with self._lock:
            self._policies[tenant.name] = tenant
        reserve = prompt_tokens + max_tokens
        try:
            self.limits.admit(tenant, rid, reserve)
        except Exception:
            self._count(tenant.name, throttled=1)
            raise
        with self._lock:
            self._reserved[rid] = (tenant.name, reserve)

    def check(self, tenant: Tenant) -> None:
        """Refuse (QuotaExceededError, counted as throttled) a request `tenant` could not be admitted for now,
        before it costs anything; `admit` checks again and reserves."""
        try:
            self.limits.check(tenant)
        except Exception:
            self._count(tenant.name, throttled=1)
            raise

    def abandon(self, rid: str) -> None:
        """A request admitted here that never reached a queue gives its reservation back."""
        with self._lock:
            entry = self._reserved.pop(rid, None)
        if entry is not None:
            self.limits.settle(entry[0], rid, entry[1], 0)

    def finished(self, request) -> None:
        """A request ended: count it, and settle its reservation with what it used."""
        prompt, completion = len(request.prompt_token_ids), len(request.output_token_ids)
        with self._lock:
            entry = self._reserved.pop(request.request_id, None)
        if entry is not None:
            self.limits.settle(entry[0], request.request_id, entry[1], prompt + completion)
        self._count(request.owner, requests=1, prompt_tokens=prompt, completion_tokens=completion,
                    failed=int(request.status.name == "FINISHED_FAILED"))

    # -- isolation ---------------------------------------------------------------------------------

    def deny(self, tenant: Tenant, action: str, target: str, reason: str) -> None:
        """Record a refusal (the audit log, and the tenant's `denied` count). Fields a client chose (paths,
        names) are cut to AUDIT_FIELD_CHARS: refusals of huge paths must not flush the log's older entries."""
        self._count(tenant.name, denied=1)
        self._audit(who=tenant.name, tool=_cut(action), args={"target": _cut(target)}, capabilities=[],
                    decision="denied", outcome="denied", error=_cut(reason), duration_s=0.0)

    # -- views -------------------------------------------------------------------------------------

    def usage(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: {f: counts.get(f, 0) for f in FIELDS} for name, counts in self._usage.items()}

    def rows(self, processes: list[dict[str, Any]], known: list[Tenant] = ()) -> list[dict[str, Any]]:
        """One row per tenant: policy, usage, and from `processes` (kernel.ps()) its queue and running."""
        with self._lock:
            policies = {**self._policies, **{t.name: t for t in known}}
        usage = self.usage()
        rows = []
        for name in sorted(set(policies) | set(usage)):
            mine = [p for p in processes if p.get("owner") == name]
            policy = policies.get(name)
            rows.append({"tenant": name, **(policy.as_dict() if policy else {"name": name}),
                         **usage.get(name, {f: 0 for f in FIELDS}),
                         "queued": sum(p.get("state") in ("waiting", "preempted") for p in mine),
                         "running": sum(p.get("state") == "running" for p in mine),
                         "inflight": self.limits.inflight(name)})
        return rows


#: the longest client-chosen text (a path, a name) one audit entry keeps of a refusal
AUDIT_FIELD_CHARS = 200


def _cut(text: str) -> str:
    return text if len(text) <= AUDIT_FIELD_CHARS else f"{text[:AUDIT_FIELD_CHARS]}... ({len(text)} characters)"
