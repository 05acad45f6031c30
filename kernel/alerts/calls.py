"""The kernel's alert calls (mixed into `Kernel`): start the evaluator at boot from the [alerts] table,
record each ended request, and answer `kernel.alerts()`. Notifications go to the plugins' `alert_fired`
and `alert_resolved` hooks, each implementation isolated from the others' failures."""

from __future__ import annotations

from typing import Any

from .manager import AlertManager
from .rules import parse_alerts
from .signals import Signals, Values


class AlertCalls:
    def _start_alerts(self) -> None:
        rules = parse_alerts(self.config.sections.get("alerts"), str(self.config.config_file))
        self._signals = Signals(rules.window_s)
        self._alerts = AlertManager(rules, self._measure, lambda hook, alert: self.plugins.call_each(hook, alert=alert))
        self._alerts.start()

    def alerts(self) -> dict[str, Any]:
        """The [alerts] rules with their state (ok, pending, firing) and last value, the names of those
        firing, and the alerts resolved recently (kernel/alerts/)."""
        return self._alerts.alerts()

    def _measure(self) -> Values:
        throttled = sum(u["throttled"] for u in self.tenants.usage().values())
        return self._signals.measure(self.engines(), throttled)
