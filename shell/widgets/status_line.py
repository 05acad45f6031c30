"""A one-line status under the chat log: what is streaming, its speed, how to stop it, and the kernel's
firing alerts (polled off the UI thread every few seconds, only when llmos.toml has [alerts] rules)."""

from __future__ import annotations

from typing import Any

from textual.reactive import reactive
from textual.widgets import Static

#: seconds between two looks at the kernel's alerts
ALERT_POLL_S = 2.0


def alert_text(state: dict[str, Any]) -> str:
    """`ALERT queue_backlog (queue_depth > 8 = 12), rss (...)`, or "" when none fires."""
    firing = [r for r in state.get("rules", ()) if r.get("state") == "firing"]
    parts = [f"{r['name']} ({r['condition']}: {r['value']:.3g})" if r.get("value") is not None else r["name"]
             for r in firing]
    return f"ALERT {', '.join(parts)}" if parts else ""


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine {
        height: 1;
        padding: 0 1;
        color: $text-muted;
        background: $panel;
    }
    StatusLine.busy { color: $text-warning; }
    StatusLine.alert { color: $text-error; text-style: bold; }
    """

    state: reactive[str] = reactive("ready")
    alerts: reactive[str] = reactive("")

    def watch_state(self, state: str) -> None:
        self.set_class(state != "ready", "busy")
        self._show()

    def watch_alerts(self, alerts: str) -> None:
        self.set_class(bool(alerts), "alert")
        self._show()

    def _show(self) -> None:
        self.update(f"{self.alerts} | {self.state}" if self.alerts else self.state)

    def follow_alerts(self, kernel: Any, every: float = ALERT_POLL_S) -> None:
        """Show `kernel`'s firing alerts; stops looking when it has no rules (or cannot say)."""
        self._kernel = kernel
        self._poll_timer = self.set_interval(every, self._poll)
        self._poll()

    def _poll(self) -> None:
        self.run_worker(self._fetch, thread=True, exclusive=True, group="alerts")

    def _fetch(self) -> None:
        try:
            state = self._kernel.alerts()
        except Exception:  # noqa: BLE001 - a kernel shutting down or too old to say: stop asking
            state = {"rules": []}
        if not state.get("rules"):
            self.app.call_from_thread(self._poll_timer.stop)
        self.app.call_from_thread(setattr, self, "alerts", alert_text(state))
