"""`llmos alerts`: the [alerts] rules of the kernel commands use (firing, pending, ok, and those resolved
recently), and `llmos alerts export --prometheus`: the same rules as a Prometheus rule file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from llmos.kernel.errors import LlmosError

from .cli_common import STATE, fail, kernel_session, out
from .cli_ps import KEY, URL, _target

alerts_app = typer.Typer(help="Alerts on the kernel's measures ([alerts] in llmos.toml).", no_args_is_help=False)
STYLE = {"firing": "bold red", "pending": "yellow", "ok": "green", "resolved": "dim"}


@alerts_app.callback(invoke_without_command=True)
def alerts(ctx: typer.Context, url: Optional[str] = URL, api_key: Optional[str] = KEY,
           as_json: bool = typer.Option(False, "--json")) -> None:
    """List every rule with its state and value, then the alerts resolved recently."""
    if ctx.invoked_subcommand is not None:
        return
    _target(url, api_key)
    with kernel_session(as_json) as kernel:
        state = kernel.alerts()
    if as_json:
        typer.echo(json.dumps(state, indent=2))
        return
    if state["rules"] and not hasattr(kernel, "where"):  # booted for this command, not the resident kernel
        out.print("[dim]no resident kernel: these rules were just loaded; alerts live in the kernel that "
                  "evaluates them (`llmos up`, `llmos serve`)[/]")
    if not state["rules"]:
        out.print("no alert rules: add [alerts.rules.NAME] tables to llmos.toml (docs/deploy.md)")
        return
    table = Table("alert", "state", "condition", "value", "for", "severity", "summary")
    for row in [*state["rules"], *state["resolved"]]:
        shown = row["state"]
        if row["state"] == "resolved":
            shown += f" {time.strftime('%H:%M:%S', time.localtime(row['resolved_at']))}"
        elif row["active_for_s"] is not None:
            shown += f" {row['active_for_s']:.0f}s"
        value = "-" if row["value"] is None else f"{row['value']:.3g}"
        table.add_row(row["name"], f"[{STYLE[row['state']]}]{shown}[/]", row["condition"], value,
                      f"{row['for_s']:g}s", row["severity"], row["summary"])
    out.print(table)


@alerts_app.command("export")
def export(prometheus: bool = typer.Option(..., "--prometheus", help="Write Prometheus alerting rules (YAML)."),
           out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
           group: str = typer.Option("llmos", "--group", help="The rule group's name.")) -> None:
    """Write the [alerts] rules of llmos.toml as Prometheus alerting rules over `llmos serve`'s /metrics."""
    import yaml

    from llmos.kernel.alerts.prometheus import prometheus_rules
    from llmos.kernel.alerts.rules import parse_alerts
    from llmos.kernel.config import Config

    try:
        config = Config.load(STATE["home"])
        rules = parse_alerts(config.sections.get("alerts"), str(config.config_file))
    except LlmosError as exc:
        raise fail(exc, False) from None
    text = yaml.safe_dump(prometheus_rules(rules, group), sort_keys=False, allow_unicode=True)
    if out_file is None:
        typer.echo(text, nl=False)
    else:
        out_file.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {len(rules.rules)} rules to {out_file}", err=True)
