"""Alerts: [alerts] rules parsed and refused at boot, the ok -> pending -> firing -> resolved machine,
what the signals measure, the Prometheus export; and end to end: a real `llmos serve` on SmolLM2 with
a rule on queue depth, loaded by concurrent HTTP clients, fires once and resolves once in a plugin's
hooks, over /llmos/alerts and `llmos alerts`."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
import yaml

import llmos
from llmos.kernel.alerts.manager import AlertManager
from llmos.kernel.alerts.prometheus import prometheus_rules
from llmos.kernel.alerts.rules import AlertsConfig, parse_alerts
from llmos.kernel.alerts.signals import Signals
from llmos.kernel.errors import ConfigError
from llmos.plugins.manager import PluginManager

from .test_plugins import install_plugin
from .util import LLMOS, start_server

KEY = "sk-alerts-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUEUE_RULE = {"metric": "queue_depth", "above": 1, "for": "0.3s", "model": "smollm2", "severity": "critical"}


# -- rules ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, says", [
    ({"metric": "queue_len", "above": 1}, "metric must be one of queue_depth"),
    ({"metric": "queue_depth"}, "exactly one threshold"),
    ({"metric": "queue_depth", "above": 1, "below": 0}, "exactly one threshold"),
    ({"metric": "queue_depth", "above": "8"}, "above must be a finite number"),
    ({"metric": "queue_depth", "above": 1, "for": "ten seconds"}, "for: expected seconds or a duration"),
    ({"metric": "queue_depth", "above": 1, "for": "-1s"}, "for must be a duration from 0s to 86400s"),
    ({"metric": ["queue_depth"], "above": 1}, "metric must be one of"),
    ({"metric": "queue_depth", "above": 10**400}, "above must be a finite number"),
    ({"metric": "rss_mb", "above": 1, "model": "smollm2"}, "measured for the whole kernel: remove `model`"),
    ({"metric": "rss_mb", "above": 1, "severity": "page"}, "severity must be one of info, warning, critical"),
])
def test_a_bad_rule_is_a_config_error_naming_it(rule, says):
    with pytest.raises(ConfigError, match=r"\[alerts.rules.r1\]") as err:
        parse_alerts({"rules": {"r1": rule}})
    assert says in str(err.value)


def test_too_many_or_too_slow_rules_are_refused():
    with pytest.raises(ConfigError, match="at most 100"):
        parse_alerts({"rules": {f"r{i}": {"metric": "rss_mb", "above": 1} for i in range(101)}})
    with pytest.raises(ConfigError, match="interval must be a duration from 0.05s to 3600s"):
        parse_alerts({"interval": "3000000h"})


def test_bad_rules_stop_the_boot_and_unknown_keys_are_named(tmp_path):
    (tmp_path / "llmos.toml").write_text('[alerts.rules.slow]\nmetric = "ttft_p95_s"\nabove = 2\nfour = "1m"\n')
    with pytest.raises(ConfigError, match=r"unknown \[alerts.rules.slow\] keys \['four'\] \(did you mean 'for'\?\)"):
        llmos.boot(home=tmp_path)
    (tmp_path / "llmos.toml").write_text('[alerts]\ninterval = "0"\n[alerts.rules.slow]\nmetric = "x"\nabove = 2\n')
    with pytest.raises(ConfigError, match="interval must be a duration from 0.05s to 3600s"):
        llmos.boot(home=tmp_path)


@pytest.mark.cli
def test_llmos_up_refuses_bad_rules_with_the_reason(tmp_path):
    (tmp_path / "llmos.toml").write_text('[alerts.rules.q]\nmetric = "queue_depth"\n')
    run = subprocess.run([LLMOS, "up"], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "LLMOS_HOME": str(tmp_path), "HOME": str(tmp_path)})
    assert run.returncode != 0
    assert "[alerts.rules.q] needs exactly one threshold" in run.stdout + run.stderr


# -- the state machine (a measuring function standing in for the kernel) ---------------------------

def manager(rules: dict, values: dict) -> tuple[AlertManager, list]:
    events: list = []
    m = AlertManager(parse_alerts({"rules": rules}), lambda: dict(values), lambda hook, a: events.append((hook, a)))
    return m, events


def test_an_alert_fires_after_its_duration_once_and_resolves_once():
    values = {("queue_depth", "smollm2"): 5, ("queue_depth", None): 5}
    m, events = manager({"q": QUEUE_RULE}, values)
    m.evaluate(now=100.0)
    assert m.alerts()["rules"][0]["state"] == "pending" and events == []
    m.evaluate(now=100.2)
    assert events == []  # held 0.2 s of the 0.3 s it must
    m.evaluate(now=100.31)
    m.evaluate(now=101.0)
    assert [e[0] for e in events] == ["alert_fired"]  # not again while it keeps firing
    fired = events[0][1]
    assert fired["name"] == "q" and fired["value"] == 5 and fired["severity"] == "critical"
    assert m.alerts()["firing"] == ["q"]
    values[("queue_depth", "smollm2")] = 0
    m.evaluate(now=102.0)
    m.evaluate(now=103.0)
    assert [e[0] for e in events] == ["alert_fired", "alert_resolved"]
    assert events[1][1]["state"] == "resolved" and events[1][1]["resolved_at"] >= fired["fired_at"]
    assert m.alerts()["resolved"][0]["name"] == "q" and m.alerts()["firing"] == []


def test_a_condition_shorter_than_its_duration_never_fires():
    values = {("queue_depth", "smollm2"): 5}
    m, events = manager({"q": QUEUE_RULE}, values)
    m.evaluate(now=10.0)
    values[("queue_depth", "smollm2")] = 1  # not above 1
    m.evaluate(now=10.5)
    values[("queue_depth", "smollm2")] = 3
    m.evaluate(now=10.6)
    m.evaluate(now=10.8)  # pending again since 10.6: 0.2 s
    assert events == [] and m.alerts()["rules"][0]["state"] == "pending"


def test_below_rules_and_missing_data():
    m, events = manager({"slow": {"metric": "ttft_p95_s", "above": 2},
                         "idle": {"metric": "rss_mb", "below": 10}}, {("rss_mb", None): 5.0})
    m.evaluate(now=1.0)
    assert [(e[0], e[1]["name"]) for e in events] == [("alert_fired", "idle")]  # no TTFT data: no alert
    assert m.alerts()["rules"][0]["value"] is None


def test_signals_measure_the_window():
    s = Signals(window_s=10)

    def ended(model, ttft, status, at):
        s.record(SimpleNamespace(model=model, status=SimpleNamespace(name=status),
                                 metrics=SimpleNamespace(finished=at, ttft=ttft)))

    for i in range(20):
        ended("a", 0.1 * (i + 1), "FINISHED_STOPPED", 95.0)
    ended("b", 9.0, "FINISHED_FAILED", 99.0)
    ended("a", 50.0, "FINISHED_STOPPED", 80.0)  # outside the window
    engines = [{"model": "a", "waiting": 3}, {"model": "r", "waiting": 1,
                                              "nodes": [{"healthy": False}, {"healthy": True}]}]
    s.measure(engines, throttled_total=4, now=95.0)
    v = s.measure(engines, throttled_total=7, now=100.0)
    assert v[("queue_depth", None)] == 4 and v[("queue_depth", "a")] == 3
    assert v[("nodes_down", None)] == 1 and v[("nodes_down", "r")] == 1
    assert v[("ttft_p95_s", "a")] == pytest.approx(1.9) and v[("ttft_p95_s", "b")] == 9.0
    assert v[("error_rate", None)] == pytest.approx(1 / 21) and v[("error_rate", "a")] == 0
    assert v[("throttles", None)] == 3  # 7 now, 4 at the window's start
    assert v[("rss_mb", None)] > 10


def test_prometheus_export_matches_the_rules():
    rules = parse_alerts({"window": "2m", "rules": {
        "q": QUEUE_RULE, "err": {"metric": "error_rate", "above": 0.1, "summary": "errors"},
        "mem": {"metric": "rss_mb", "above": 8000}}})
    doc = yaml.safe_load(yaml.safe_dump(prometheus_rules(rules)))
    q, err, mem = doc["groups"][0]["rules"]
    assert q == {"alert": "q", "expr": 'sum(llmos_queue_depth{model="smollm2"}) > 1', "for": "1s",
                 "labels": {"severity": "critical", "model": "smollm2"},
                 "annotations": {"summary": "queue_depth[smollm2] > 1 for 0.3s"}}
    assert "[120s]" in err["expr"] and "finished_failed" in err["expr"] and err["annotations"]["summary"] == "errors"
    assert mem["expr"] == "process_resident_memory_bytes / 1048576 > 8000" and "for" not in mem
    assert prometheus_rules(AlertsConfig()) == {"groups": [{"name": "llmos", "rules": []}]}


def test_a_kernel_without_rules_runs_no_alert_thread(tmp_path):
    with llmos.boot(home=tmp_path, plugins=PluginManager(load_entrypoints=False)) as k:
        assert k.alerts()["rules"] == []
        assert not any(t.name == "llmos-alerts" for t in threading.enumerate())


# -- end to end: a served kernel under load --------------------------------------------------------

ALERT_PLUGIN = '''
import json, os
from llmos import hookimpl

def _log(kind, alert):
    with open(os.environ["ALERT_LOG"], "a") as f:
        f.write(json.dumps({"hook": kind, "name": alert["name"], "value": alert["value"]}) + "\\n")

@hookimpl
def alert_fired(alert):
    _log("fired", alert)

@hookimpl
def alert_resolved(alert):
    _log("resolved", alert)
'''


@pytest.mark.model
@pytest.mark.cli
def test_an_alert_fires_under_load_and_resolves_after_it_once_each(tmp_path):
    import httpx

    (tmp_path / "site").mkdir()
    site = install_plugin(tmp_path / "site", "alertplug", ALERT_PLUGIN)
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmos.toml").write_text(textwrap.dedent('''
        [kernel]
        max_running = 1
        [alerts]
        interval = "0.1s"
        [alerts.rules.backlog]
        metric = "queue_depth"
        above = 1
        for = "0.3s"
        model = "smollm2"
        severity = "critical"
        summary = "requests are queueing"
    '''))
    log = tmp_path / "alerts.jsonl"
    proc, base = start_server(tmp_path, "--api-key", KEY, env={"PYTHONPATH": str(site), "LLMOS_PLUGINS": "alertplug",
                                             "ALERT_LOG": str(log)})
    try:
        assert httpx.get(f"{base}/llmos/alerts", headers=AUTH).json()["rules"][0]["state"] == "ok"
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count from one to twenty."}],
                "max_tokens": 48, "temperature": 0}
        # 1. Five clients at once on a model that decodes one at a time: four wait.
        with httpx.Client(timeout=120, headers=AUTH) as c:
            threads = [threading.Thread(target=c.post, args=(f"{base}/v1/chat/completions",), kwargs={"json": body})
                       for _ in range(5)]
            for t in threads:
                t.start()
            states = set()
            while any(t.is_alive() for t in threads):
                states.add(httpx.get(f"{base}/llmos/alerts", headers=AUTH).json()["rules"][0]["state"])
                time.sleep(0.05)
            for t in threads:
                t.join()
        assert "firing" in states
        # 2. The queue drained: the alert resolves (evaluated every 0.1 s).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(f"{base}/llmos/alerts", headers=AUTH).json()["firing"]:
            time.sleep(0.1)
        state = httpx.get(f"{base}/llmos/alerts", headers=AUTH).json()
        assert state["firing"] == [] and state["resolved"][0]["name"] == "backlog"
        time.sleep(0.5)  # no late or repeated notification
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(e["hook"], e["name"]) for e in events] == [("fired", "backlog"), ("resolved", "backlog")]
        assert events[0]["value"] >= 2
        # 3. The CLI reads the same state; the Prometheus export names metrics this server exports.
        cli = subprocess.run([LLMOS, "alerts", "--json", "--url", base, "--api-key", KEY], capture_output=True,
                             text=True, timeout=60)
        assert json.loads(cli.stdout)["resolved"][0]["name"] == "backlog"
        export = subprocess.run([LLMOS, "alerts", "export", "--prometheus"], capture_output=True, text=True,
                                timeout=60, env={**os.environ, "LLMOS_HOME": str(home)}, check=True)
        expr = yaml.safe_load(export.stdout)["groups"][0]["rules"][0]["expr"]
        metrics = httpx.get(f"{base}/metrics", headers=AUTH).text
        assert expr == 'sum(llmos_queue_depth{model="smollm2"}) > 1'
        assert 'llmos_queue_depth{driver="llamacpp",model="smollm2"}' in metrics
        assert "process_resident_memory_bytes" in metrics
    finally:
        proc.terminate()
        proc.wait(30)
