"""`llmos alerts export --prometheus`: the [alerts] rules as Prometheus alerting rules over the metrics
`llmos serve` exports at /metrics (shell/server/metrics.py), for people who already run Prometheus and
Alertmanager. Each expression measures what the kernel's own evaluator measures (signals.py)."""

from __future__ import annotations

from typing import Any

from .rules import AlertRule, AlertsConfig

FAILED_STATUSES = "finished_failed|finished_timed_out"


def expression(rule: AlertRule, window_s: float) -> str:
    """The PromQL expression that holds while `rule`'s condition does."""
    w = f"{max(1, round(window_s))}s"
    sel = f'{{model="{_quote(rule.model)}"}}' if rule.model else ""
    with_model = f'model="{_quote(rule.model)}",' if rule.model else ""
    value = {
        "queue_depth": f"sum(llmos_queue_depth{sel})",
        "ttft_p95_s": ("histogram_quantile(0.95, sum by (le) "
                       f"(rate(llmos_time_to_first_token_seconds_bucket{sel}[{w}])))"),
        "error_rate": (f'sum(rate(llmos_requests_total{{{with_model}status=~"{FAILED_STATUSES}"}}[{w}])) '
                       f"/ sum(rate(llmos_requests_total{sel}[{w}]))"),
        "throttles": f"sum(increase(llmos_tenant_throttled_total[{w}]))",
        "rss_mb": "process_resident_memory_bytes / 1048576",
        "nodes_down": f"sum(llmos_remote_nodes_down{sel})",
    }[rule.metric]
    return f"{value} {'>' if rule.above else '<'} {rule.threshold:g}"


def prometheus_rules(config: AlertsConfig, group: str = "llmos") -> dict[str, Any]:
    """A Prometheus rule file (as a dict to dump as YAML): one group, one alerting rule per llmos rule."""
    rules = []
    for rule in config.rules:
        entry: dict[str, Any] = {"alert": rule.name, "expr": expression(rule, config.window_s)}
        if rule.for_s:
            entry["for"] = f"{max(1, round(rule.for_s))}s"
        entry["labels"] = {"severity": rule.severity, **({"model": rule.model} if rule.model else {})}
        entry["annotations"] = {"summary": rule.as_dict()["summary"]}
        rules.append(entry)
    return {"groups": [{"name": group, "rules": rules}]}


def _quote(text: str | None) -> str:
    return (text or "").replace("\\", "\\\\").replace('"', '\\"')
