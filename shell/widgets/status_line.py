"""A one-line status under the chat log: what is streaming, its speed, and how to stop it."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine {
        height: 1;
        padding: 0 1;
        color: $text-muted;
        background: $panel;
    }
    StatusLine.busy { color: $text-warning; }
    """

    state: reactive[str] = reactive("ready")

    def watch_state(self, state: str) -> None:
        self.set_class(state != "ready", "busy")
        self.update(state)
