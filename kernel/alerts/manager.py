"""The alert evaluator: every `interval` it measures (signals.py) and moves each rule through

    ok -> pending (the condition holds) -> firing (it held for `for`) -> ok (it stopped holding: resolved)

calling `notify("alert_fired" | "alert_resolved", alert)` once per transition into and out of firing
(the kernel passes these to the plugins' hooks). A pending alert that stops holding goes back to ok
quietly. The manager runs on its own daemon thread; a failing measurement is logged and the rules
keep their state until the next evaluation, so one bad sample neither fires nor resolves anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .rules import AlertRule, AlertsConfig
from .signals import Values, value_for

log = logging.getLogger("llmos.alerts")
#: resolved alerts kept for `alerts()` (newest last)
HISTORY = 50


@dataclass
class _State:
    rule: AlertRule
    state: str = "ok"  # ok | pending | firing
    value: float | None = None
    since: float | None = None  # monotonic: when the condition started holding
    fired_at: float | None = None  # wall clock

    def as_dict(self, now: float) -> dict[str, Any]:
        return {**self.rule.as_dict(), "state": self.state, "value": self.value,
                "active_for_s": None if self.since is None else round(now - self.since, 3),
                "fired_at": self.fired_at}


class AlertManager:
    def __init__(self, config: AlertsConfig, measure: Callable[[], Values],
                 notify: Callable[[str, dict[str, Any]], None]) -> None:
        self.config = config
        self._measure = measure
        self._notify = notify
        self._states = [_State(rule) for rule in config.rules]
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.evaluations = 0

    def start(self) -> None:
        """Evaluate every interval on a daemon thread (nothing to do without rules)."""
        if self._states and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmos-alerts", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self.evaluate()
            except Exception:  # noqa: BLE001 - a bad sample must not end alerting
                log.exception("alert evaluation failed; the rules keep their state")

    def evaluate(self, now: float | None = None) -> None:
        """One pass: measure, then move every rule (notifications after the lock is released)."""
        values = self._measure()
        now = time.monotonic() if now is None else now
        events: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            for st in self._states:
                events += self._step(st, values, now)
            self.evaluations += 1
        for hook, alert in events:
            self._notify(hook, alert)

    def _step(self, st: _State, values: Values, now: float) -> list[tuple[str, dict[str, Any]]]:
        st.value = value_for(values, st.rule.metric, st.rule.model)
        if st.rule.holds(st.value):
            if st.state == "ok":
                st.state, st.since = "pending", now
            if st.state == "pending" and now - st.since >= st.rule.for_s:
                st.state, st.fired_at = "firing", time.time()
                return [("alert_fired", st.as_dict(now))]
            return []
        events = []
        if st.state == "firing":
            resolved = {**st.as_dict(now), "state": "resolved", "resolved_at": time.time()}
            self._history.append(resolved)
            events.append(("alert_resolved", dict(resolved)))  # plugins get their own copy of the history's
        st.state, st.since, st.fired_at = "ok", None, None
        return events

    def alerts(self) -> dict[str, Any]:
        """Every rule with its state and last value, and the alerts resolved recently (newest first)."""
        now = time.monotonic()
        with self._lock:
            return {"rules": [st.as_dict(now) for st in self._states],
                    "firing": [st.rule.name for st in self._states if st.state == "firing"],
                    "resolved": list(reversed(self._history)),
                    "interval_s": self.config.interval_s, "window_s": self.config.window_s}
