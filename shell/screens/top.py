"""The process monitor: the kernel's firing and pending alerts, live requests and agents from
`kernel.ps()` (a queued one with its place in line and ETA), per tenant its tokens in/out, requests,
queue and throttles from `kernel.tenants_info()`, and per-engine sparklines of throughput and queue
depth from `kernel.engines()`. `k` kills the selected row."""

from __future__ import annotations

from collections import deque
from typing import Any

from textual.css.query import NoMatches
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Sparkline

from llmos.kernel.errors import LlmosError

from ..commands import process_rows

COLUMNS = ("id", "client", "tenant", "model", "state", "wait s", "ttft s", "tok/s", "tokens")
TENANT_COLUMNS = ("tenant", "class", "tokens in", "tokens out", "requests", "queued", "running", "throttled", "denied")
HISTORY = 60


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _state(row: dict[str, Any]) -> str:
    """`waiting #2 ~3s` for a queued request: its place in line and when it should start."""
    state, position, eta = str(row.get("state", "")), row.get("position"), row.get("eta_s")
    if position is None:
        return state
    return f"{state} #{position}" + (f" ~{eta:.0f}s" if eta is not None else "")


class TopScreen(Screen):
    DEFAULT_CSS = """
    TopScreen #procs { height: 1fr; }
    TopScreen #tenants { height: auto; max-height: 8; border-top: solid $primary 50%; }
    TopScreen #engines { height: auto; max-height: 12; border-top: solid $primary 50%; }
    TopScreen .engine { height: 2; }
    TopScreen .engine Label { width: 22; }
    TopScreen .engine Sparkline { width: 1fr; margin-right: 1; }
    TopScreen #summary { height: 1; padding: 0 1; color: $text-muted; }
    TopScreen #alerts { height: auto; max-height: 4; padding: 0 1; color: $text-error; }
    """

    BINDINGS = [
        Binding("k", "kill", "Kill"),
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("r", "refresh_now", "Refresh", show=False),
    ]

    def __init__(self, kernel: Any, agents: dict[str, Any] | None = None, interval: float = 0.5) -> None:
        super().__init__()
        self.kernel = kernel
        self.agents = agents if agents is not None else {}
        self.interval = interval
        self.throughput: dict[str, deque[float]] = {}
        self.queue_depth: dict[str, deque[float]] = {}
        self.refreshes = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("", id="summary")
        yield Label("", id="alerts")
        table: DataTable = DataTable(id="procs", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        tenants: DataTable = DataTable(id="tenants", cursor_type="none", zebra_stripes=True)
        tenants.add_columns(*TENANT_COLUMNS)
        yield tenants
        yield Vertical(id="engines")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "top"
        self.refresh_now()
        self.set_interval(self.interval, self.refresh_now)

    def rows(self) -> list[dict[str, Any]]:
        return process_rows(self.kernel, self.agents)

    def refresh_now(self) -> None:
        rows = self.rows()
        table = self.query_one("#procs", DataTable)
        selected = self._selected_id()
        table.clear()
        for r in rows:
            table.add_row(str(r["id"]), str(r.get("client") or "-"), str(r.get("owner", "")), str(r.get("model", "")),
                          _state(r),
                          _fmt(r.get("queue_wait_s")), _fmt(r.get("ttft_s")), _fmt(r.get("tokens_per_s"), ".1f"),
                          str(r.get("output_tokens", "-")), key=str(r["id"]))
        if selected is not None and selected in {str(r["id"]) for r in rows}:
            table.move_cursor(row=table.get_row_index(selected))
        self._update_engines(rows)
        self._update_tenants()
        self._update_alerts()
        self.refreshes += 1
        running = sum(1 for r in rows if r.get("state") == "running")
        self.query_one("#summary", Label).update(f"{len(rows)} processes, {running} running - k kills the "
                                                 f"selected row, esc returns")

    def _update_tenants(self) -> None:
        table = self.query_one("#tenants", DataTable)
        table.clear()
        for t in self.kernel.tenants_info():
            table.add_row(t["tenant"], str(t.get("priority") or "-"), str(t["prompt_tokens"]), str(t["completion_tokens"]),
                          str(t["requests"]), str(t["queued"]), str(t["running"]), str(t["throttled"]), str(t["denied"]))

    def _update_alerts(self) -> None:
        try:
            rows = [r for r in self.kernel.alerts()["rules"] if r["state"] != "ok"]
        except LlmosError:  # a tenant key that is no admin: the machine's alerts are not its to see
            rows = []
        self.query_one("#alerts", Label).update("\n".join(
            f"{r['state'].upper()} {r['name']}: {r['condition']} (now {r['value']:.3g}, {r['active_for_s']:.0f}s) "
            f"- {r['summary']}" for r in rows))

    def _update_engines(self, rows: list[dict[str, Any]]) -> None:
        box = self.query_one("#engines", Vertical)
        for eng in self.kernel.engines():  # one model may be served by several drivers: one row each
            model, driver = eng["model"], eng["driver"]
            key = f"{model}@{driver}"
            tput = sum(r.get("tokens_per_s") or 0.0 for r in rows
                       if r.get("model") == model and r.get("driver") == driver and r.get("state") == "running")
            self.throughput.setdefault(key, deque([0.0] * HISTORY, maxlen=HISTORY)).append(tput)
            self.queue_depth.setdefault(key, deque([0.0] * HISTORY, maxlen=HISTORY)).append(
                float(eng.get("waiting", 0)))
            wid = "eng-" + "".join(ch if ch.isalnum() else "_" for ch in key)
            if not box.query(f"#{wid}"):
                box.mount(Horizontal(Label(id=f"{wid}-label"), Sparkline([], id=f"{wid}-tput"),
                                     Sparkline([], id=f"{wid}-queue"), classes="engine", id=wid))
                continue  # filled at the next refresh, once mounted
            try:
                self.query_one(f"#{wid}-label", Label).update(
                    f"{model[:12]} {driver[:8]} {tput:5.1f} tok/s\nqueue {eng.get('waiting', 0)} "
                    f"run {eng.get('running', 0)}")
                self.query_one(f"#{wid}-tput", Sparkline).data = list(self.throughput[key])
                self.query_one(f"#{wid}-queue", Sparkline).data = list(self.queue_depth[key])
            except NoMatches:  # its children are still being mounted
                continue

    def _selected_id(self) -> str | None:
        table = self.query_one("#procs", DataTable)
        if table.row_count == 0:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - cursor outside the rows
            return None

    def action_refresh_now(self) -> None:
        self.refresh_now()

    def action_kill(self) -> None:
        pid = self._selected_id()
        if pid is None:
            self.notify("nothing selected", severity="warning")
            return
        if pid in self.agents:
            self.agents[pid].kill()
            ok = True
        else:
            ok = self.kernel.cancel(pid)
        self.notify(f"killed {pid}" if ok else f"{pid} already finished", severity="information" if ok else "warning")
        self.refresh_now()
