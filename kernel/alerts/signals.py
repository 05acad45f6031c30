"""What alert rules measure, from what the kernel already knows: the engines' queues, the requests that
ended (recorded as they end), the tenants' throttle counter, the process's RSS and the remote nodes.

`Signals.measure` returns {(metric, model or None): value}; a value is None where the window holds no
data (no request ended: no p95 and no error rate), which never fires a rule.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Iterable

Values = dict[tuple[str, str | None], float | None]
#: requests remembered for the window's figures (beyond this, the oldest go first)
MAX_RECORDED = 50_000
FAILED = ("FINISHED_FAILED", "FINISHED_TIMED_OUT")
#: throttle-counter samples kept (a window longer than this many evaluations starts at the oldest kept)
MAX_SAMPLES = 20_000


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class Signals:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._ended: deque[tuple[float, str, float | None, bool]] = deque(maxlen=MAX_RECORDED)
        self._throttled: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)
        self._lock = threading.Lock()

    def record(self, request: Any) -> None:
        """A request ended (the kernel's finish callback): its model, TTFT and whether it failed."""
        m = request.metrics
        with self._lock:
            self._ended.append((m.finished or time.monotonic(), request.model, m.ttft,
                                request.status.name in FAILED))

    def measure(self, engines: Iterable[dict[str, Any]], throttled_total: int, now: float | None = None) -> Values:
        now = time.monotonic() if now is None else now
        start = now - self.window_s
        values: Values = {}
        # 1. Queues and nodes, per loaded model and summed.
        for eng in engines:
            model = eng["model"]
            down = sum(1 for n in eng.get("nodes") or () if not n.get("healthy", True))
            for metric, value in (("queue_depth", eng.get("waiting", 0)), ("nodes_down", down)):
                values[(metric, model)] = (values.get((metric, model)) or 0) + value
                values[(metric, None)] = (values.get((metric, None)) or 0) + value
        values.setdefault(("queue_depth", None), 0)
        values.setdefault(("nodes_down", None), 0)
        # 2. Requests that ended within the window.
        with self._lock:
            while self._ended and self._ended[0][0] < start:
                self._ended.popleft()
            ended = [e for e in self._ended if e[0] >= start]  # recorded in finishing order, nearly
        by_model: dict[str | None, list[tuple[float, str, float | None, bool]]] = {None: ended}
        for e in ended:  # one pass, not one per model
            by_model.setdefault(e[1], []).append(e)
        for model, rows in by_model.items():
            ttfts = sorted(e[2] for e in rows if e[2] is not None)
            values[("ttft_p95_s", model)] = _p95(ttfts)
            values[("error_rate", model)] = sum(e[3] for e in rows) / len(rows) if rows else None
        # 3. Throttles: the counter's growth since the window's start.
        with self._lock:
            self._throttled.append((now, throttled_total))
            while len(self._throttled) > 1 and self._throttled[1][0] <= start:
                self._throttled.popleft()
            values[("throttles", None)] = throttled_total - self._throttled[0][1]
        values[("rss_mb", None)] = rss_bytes() / 2**20
        return values


def value_for(values: Values, metric: str, model: str | None) -> float | None:
    """The rule's value: a model not loaded has an empty queue and no node down, and no other figure."""
    if (metric, model) in values:
        return values[(metric, model)]
    return 0.0 if metric in ("queue_depth", "nodes_down") else None


def _p95(sorted_values: list[float]) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, -(-95 * len(sorted_values) // 100) - 1))]
