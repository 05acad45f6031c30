"""Alerts: threshold rules over what the kernel measures, evaluated by the kernel itself.

`rules.py` parses the [alerts] table of llmos.toml (bad rules are boot errors), `signals.py` turns the
kernel's queues, ended requests, throttles, RSS and remote nodes into values, `manager.py` moves each
rule through ok -> pending -> firing -> resolved on its own thread, and `prometheus.py` writes the same
rules as Prometheus alerting rules over the metrics `llmos serve` exports.

Owns: the rules' states and the recently resolved alerts (in memory; nothing stored).
Must not import: the facade `kernel.py`, models, drivers or any engine library; the kernel hands it a
measuring function and a notifier (the `alert_fired` / `alert_resolved` hooks).
"""
