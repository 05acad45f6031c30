"""Alert rules: the `[alerts]` table of llmos.toml, parsed and checked once at boot.

    [alerts]
    interval = "5s"              # how often the kernel evaluates the rules
    window = "1m"                # p95 TTFT, error rate and throttles are measured over this window

    [alerts.rules.queue_backlog]
    metric = "queue_depth"       # one of METRICS below
    above = 8                    # or `below = ...`: exactly one threshold
    for = "30s"                  # the condition must hold this long before the alert fires (default 0)
    model = "smollm2"            # optional: that model's value instead of all models'
    severity = "warning"         # info | warning | critical
    summary = "requests are queueing"

A rule the kernel cannot evaluate (unknown metric, no threshold, a bad duration, a `model` on a
process-wide metric) is a ConfigError naming the rule and what to fix: `llmos up` and `llmos serve` stop
at boot instead of running without the alert. This module parses; manager.py evaluates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..lib.durations import parse_duration
from ..errors import ConfigError

#: metric -> (what it measures, whether a rule may name a model)
METRICS: dict[str, tuple[str, bool]] = {
    "queue_depth": ("requests waiting to be scheduled, over the loaded models (or the rule's model)", True),
    "ttft_p95_s": ("95th percentile time to first token, seconds, of requests ended within the window", True),
    "error_rate": ("share (0-1) of requests ended within the window that failed or timed out", True),
    "throttles": ("requests refused by tenant quotas within the window", False),
    "rss_mb": ("resident memory of the kernel's process, MiB", False),
    "nodes_down": ("remote nodes marked down after failures (over remote models, or the rule's model)", True),
}
SEVERITIES = ("info", "warning", "critical")
MAX_RULES = 100
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    threshold: float
    above: bool  # True: fires while value > threshold; False: while value < threshold
    for_s: float = 0.0
    model: str | None = None
    severity: str = "warning"
    summary: str = ""

    @property
    def condition(self) -> str:
        return f"{self.metric}{f'[{self.model}]' if self.model else ''} {'>' if self.above else '<'} {self.threshold:g}"

    def holds(self, value: float | None) -> bool:
        """Whether the condition holds for `value` (None, no data in the window: it does not)."""
        if value is None:
            return False
        return value > self.threshold if self.above else value < self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "model": self.model, "condition": self.condition,
                "threshold": self.threshold, "for_s": self.for_s, "severity": self.severity,
                "summary": self.summary or self.condition + (f" for {self.for_s:g}s" if self.for_s else "")}


@dataclass(frozen=True)
class AlertsConfig:
    rules: tuple[AlertRule, ...] = ()
    interval_s: float = 5.0
    window_s: float = 60.0


def parse_alerts(table: Mapping[str, Any] | None, where: str = "llmos.toml") -> AlertsConfig:
    """The [alerts] table as an AlertsConfig; ConfigError naming the rule and key at fault."""
    if not table:
        return AlertsConfig()
    interval = _duration(table.get("interval", 5.0), f"{where}: [alerts] interval", lo=0.05, hi=3600)
    window = _duration(table.get("window", 60.0), f"{where}: [alerts] window", lo=1.0, hi=86400)
    rules = table.get("rules", {})
    if not isinstance(rules, Mapping):
        raise ConfigError(f"{where}: [alerts.rules] must be a table of rules ([alerts.rules.NAME])")
    if len(rules) > MAX_RULES:
        raise ConfigError(f"{where}: [alerts.rules] holds {len(rules)} rules: at most {MAX_RULES}")
    return AlertsConfig(tuple(_rule(name, body, where) for name, body in rules.items()), interval, window)


def _rule(name: str, body: Any, where: str) -> AlertRule:
    at = f"{where}: [alerts.rules.{name}]"
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{at}: a rule name starts with a letter and has only letters, digits, '_', '-', '.' "
                          "(at most 64)")
    if not isinstance(body, Mapping):
        raise ConfigError(f"{at} must be a table with metric and above/below")
    metric = body.get("metric")
    if not isinstance(metric, str) or metric not in METRICS:
        raise ConfigError(f"{at} metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if ("above" in body) == ("below" in body):
        raise ConfigError(f"{at} needs exactly one threshold: `above = N` or `below = N`")
    key = "above" if "above" in body else "below"
    threshold = body[key]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or abs(threshold) > 1e15 \
            or not math.isfinite(threshold):
        raise ConfigError(f"{at} {key} must be a finite number (at most 1e15), got {threshold!r}")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ConfigError(f"{at} model must be a model name, got {model!r}")
    if model is not None and not METRICS[metric][1]:
        raise ConfigError(f"{at} {metric} is measured for the whole kernel: remove `model`")
    severity = body.get("severity", "warning")
    if severity not in SEVERITIES:
        raise ConfigError(f"{at} severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    summary = body.get("summary", "")
    if not isinstance(summary, str) or len(summary) > 500:
        raise ConfigError(f"{at} summary must be a string of at most 500 characters")
    for_s = _duration(body.get("for", 0), f"{at} for", lo=0.0, hi=86400)
    return AlertRule(name, metric, float(threshold), key == "above", for_s, model, severity, summary)


def _duration(value: Any, where: str, *, lo: float, hi: float) -> float:
    try:
        seconds = parse_duration(value)
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not lo <= seconds <= hi:
        raise ConfigError(f"{where} must be a duration from {lo:g}s to {hi:g}s, got {value!r}")
    return seconds
