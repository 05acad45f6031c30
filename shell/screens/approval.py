"""Asks the user whether a tool may use capabilities it was not granted: once, always, or deny."""

from __future__ import annotations

import threading
import time

from rich.markup import escape
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ApprovalScreen(ModalScreen[str]):
    """Dismisses with "once", "always" or "deny" (the kernel's `Approver` answers)."""

    DEFAULT_CSS = """
    ApprovalScreen { align: center middle; }
    ApprovalScreen > Vertical {
        width: 64; max-width: 100%; height: auto;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    ApprovalScreen #approval-question { width: 100%; margin-bottom: 1; }
    ApprovalScreen Horizontal { height: auto; align-horizontal: center; }
    ApprovalScreen Button { margin: 0 1; min-width: 12; }
    """

    BINDINGS = [
        Binding("o", "answer('once')", "Allow once"),
        Binding("a", "answer('always')", "Always"),
        Binding("d,escape", "answer('deny')", "Deny"),
    ]

    def __init__(self, tool: str, missing: frozenset[str]) -> None:
        super().__init__()
        self.tool = tool
        self.missing = missing

    def compose(self) -> ComposeResult:
        caps = escape(", ".join(sorted(self.missing)))
        with Vertical():
            yield Label(f"Tool [b]{escape(self.tool)}[/b] needs capability [b]{caps}[/b], which is not granted.\n"
                        "Allow it?", id="approval-question")
            with Horizontal():
                yield Button("Allow once (o)", id="once", variant="primary")
                yield Button("Always (a)", id="always", variant="warning")
                yield Button("Deny (d)", id="deny", variant="error")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "deny")

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)


def ask_approval(app: App, tool: str, missing: frozenset[str], timeout: float = 600) -> str:
    """Show an `ApprovalScreen` from a worker thread and wait for the answer ("deny" when the app is
    not running, on its own UI thread, or after `timeout` seconds)."""
    if threading.get_ident() == app._thread_id:
        return "deny"  # never block the UI thread waiting on itself
    answered = threading.Event()
    answer = ["deny"]

    def done(result: str | None) -> None:
        answer[0] = result or "deny"
        answered.set()

    try:
        app.call_from_thread(app.push_screen, ApprovalScreen(tool, missing), done)
    except RuntimeError:  # the app is not running
        return "deny"
    deadline = time.monotonic() + timeout
    while not answered.wait(0.2):
        if time.monotonic() > deadline or not app.is_running:
            return "deny"
    return answer[0]
