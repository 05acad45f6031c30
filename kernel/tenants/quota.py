"""Per-tenant limits: a token bucket for tokens per minute and a count of requests in flight.

The bucket holds at most `BURST_S` seconds of the tenant's rate and refills continuously. A request is
admitted while the bucket is not in debt and reserves its prompt tokens plus its `max_tokens` at once
(so concurrent requests cannot all slip past one check); when it ends, what it did not generate is
given back. Over a long window a tenant is served its rate, plus at most one burst and one request.
Refused: `QuotaExceededError` (429) whose `retry_after` is when the bucket is out of debt.

Boundaries: pure Python, thread-safe (the server calls from worker threads, engines settle from theirs).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..errors import QuotaExceededError

#: seconds of its rate a tenant that was idle may spend at once
BURST_S = 1.0


class TokenBucket:
    def __init__(self, tokens_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = tokens_per_minute / 60.0
        self.capacity = max(1.0, self.rate * BURST_S)
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self.level = self.capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = now

    def wait_s(self) -> float:
        """Seconds until a request may be admitted (0: now)."""
        self._refill()
        return 0.0 if self.level > 0 else (-self.level + 1e-9) / self.rate + 1e-3

    def take(self, n: int) -> None:
        self._refill()
        self.level -= n

    def give(self, n: int) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + n)


class Limits:
    """Buckets and in-flight counts by tenant name."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self._inflight: dict[str, dict[str, float]] = {}  # tenant -> request id -> started
        self._duration: dict[str, float] = {}  # tenant -> moving average of its requests' seconds

    def check(self, tenant) -> None:
        """Raise QuotaExceededError if `tenant` could not be admitted now (reserves nothing): what a request
        checks before it costs the machine anything (a model load, a RAG search, an adapter)."""
        with self._lock:
            self._refuse(tenant)

    def admit(self, tenant, rid: str, tokens: int) -> None:
        """Reserve `tokens` for request `rid` of `tenant` (a Tenant) or raise QuotaExceededError."""
        with self._lock:
            self._refuse(tenant)
            bucket = self._bucket(tenant)
            if bucket is not None:
                bucket.take(tokens)
            self._inflight.setdefault(tenant.name, {})[rid] = self._clock()

    def _refuse(self, tenant) -> None:
        inflight = self._inflight.get(tenant.name, {})
        if tenant.max_concurrency is not None and len(inflight) >= tenant.max_concurrency:
            raise QuotaExceededError(
                f"tenant {tenant.name!r} has {len(inflight)} requests in flight, its limit "
                f"(max_concurrency {tenant.max_concurrency}): wait for one to finish",
                tenant.name, self._next_finish(tenant.name, inflight))
        bucket = self._bucket(tenant)
        wait = bucket.wait_s() if bucket is not None else 0.0
        if wait > 0:
            raise QuotaExceededError(
                f"tenant {tenant.name!r} is over its {tenant.tokens_per_minute} tokens per minute "
                f"(prompt + completion): retry in {wait:.1f} s", tenant.name, wait)

    def settle(self, tenant_name: str, rid: str, reserved: int, used: int) -> None:
        """Request `rid` ended having used `used` of the `reserved` tokens."""
        with self._lock:
            started = self._inflight.get(tenant_name, {}).pop(rid, None)
            if started is None:
                return
            seconds = self._clock() - started
            self._duration[tenant_name] = 0.8 * self._duration.get(tenant_name, seconds) + 0.2 * seconds
            bucket = self._buckets.get(tenant_name)
            if bucket is not None and reserved > used:
                bucket.give(reserved - used)

    def inflight(self, tenant_name: str) -> int:
        with self._lock:
            return len(self._inflight.get(tenant_name, {}))

    def _bucket(self, tenant) -> TokenBucket | None:
        tpm = tenant.tokens_per_minute
        bucket = self._buckets.get(tenant.name)
        if tpm is None:
            self._buckets.pop(tenant.name, None)
            return None
        if bucket is None or bucket.tokens_per_minute != tpm:  # a new tenant, or its limit changed
            bucket = self._buckets[tenant.name] = TokenBucket(tpm, self._clock)
        return bucket

    def _next_finish(self, name: str, inflight: dict[str, float]) -> float:
        """When its oldest request should end, from how long its requests have taken lately."""
        typical = self._duration.get(name, 1.0)
        oldest = self._clock() - min(inflight.values())
        return max(0.5, typical - oldest)
