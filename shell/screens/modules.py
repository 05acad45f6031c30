"""The modules screen: installed modules (`kernel.modules_info()`) with where each is loaded;
`i` loads the selected one (`kernel.insmod`), `r` unloads it (`kernel.rmmod`)."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label

from llmos.kernel.errors import LlmosError


class ModulesScreen(Screen):
    DEFAULT_CSS = """
    ModulesScreen #modules { height: 1fr; }
    ModulesScreen #modules-status { height: auto; padding: 0 1; color: $text-muted; }
    ModulesScreen #modules-status.error { color: $text-error; }
    """

    BINDINGS = [
        Binding("i", "insmod", "insmod"),
        Binding("r", "rmmod", "rmmod"),
        Binding("g", "reload", "Refresh"),
        Binding("escape,q", "app.pop_screen", "Back"),
    ]

    def __init__(self, kernel: Any) -> None:
        super().__init__()
        self.kernel = kernel

    def compose(self) -> ComposeResult:
        yield Header()
        table: DataTable = DataTable(id="modules", cursor_type="row", zebra_stripes=True)
        table.add_columns("name", "base model", "method", "loaded on", "uses")
        yield table
        yield Label("i insmod - r rmmod - esc back", id="modules-status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "modules"
        self.action_reload()

    @work(thread=True, group="modules", exclusive=True)
    def action_reload(self) -> None:
        rows = self.kernel.modules_info()
        self.app.call_from_thread(self._fill, rows)

    def _fill(self, rows: list[dict[str, Any]]) -> None:
        table = self.query_one("#modules", DataTable)
        table.clear()
        for m in rows:
            loaded = m.get("loaded") or []
            table.add_row(m["name"], str(m.get("base_model", "")), str(m.get("method", "")),
                          ", ".join(r["driver"] for r in loaded) or "-",
                          str(sum(r.get("use_count", 0) for r in loaded)), key=m["name"])
        if not rows:
            self._status("no modules installed: `llmos mod install PATH` adds one")

    def _status(self, text: str, error: bool = False) -> None:
        label = self.query_one("#modules-status", Label)
        label.update(text)
        label.set_class(error, "error")

    def _selected(self) -> str | None:
        table = self.query_one("#modules", DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_insmod(self) -> None:
        if (name := self._selected()) is not None:
            self._status(f"loading {name}...")
            self._run("insmod", name)

    def action_rmmod(self) -> None:
        if (name := self._selected()) is not None:
            self._run("rmmod", name)

    @work(thread=True, group="modules-op")
    def _run(self, op: str, name: str) -> None:
        try:
            getattr(self.kernel, op)(name)
            message, error = f"{op} {name}: done", False
        except LlmosError as exc:
            message, error = str(exc), True
        self.app.call_from_thread(self._status, message, error)
        self.action_reload()
