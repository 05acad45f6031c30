"""The multi-line prompt: Enter sends, ctrl+j (or shift+enter / alt+enter where the terminal sends
them) inserts a newline, up/down on the first/last line walk the history, Tab or → accepts the
completion shown after the cursor."""

from __future__ import annotations

from typing import Callable

from textual import events
from textual.message import Message
from textual.widgets import TextArea

NEWLINE_KEYS = ("ctrl+j", "shift+enter", "alt+enter")


class PromptInput(TextArea):
    DEFAULT_CSS = """
    PromptInput {
        height: auto;
        min-height: 3;
        max-height: 10;
        border: round $primary 60%;
        padding: 0 1;
    }
    PromptInput:focus { border: round $primary; }
    """

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, suggest: Callable[[str], str | None] | None = None, **kwargs) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, **kwargs)
        self._suggest = suggest
        self.sent: list[str] = []
        self._history_pos: int | None = None  # index into history while browsing it
        self._draft = ""

    # -- keys --------------------------------------------------------------------------------------

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.submit()
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if event.key == "tab" and self.suggestion:
            event.stop()
            event.prevent_default()
            self.insert(self.suggestion)
            return
        await super()._on_key(event)

    def submit(self) -> None:
        text = self.text.strip()
        if not text:
            return
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._history_pos = None
        self.clear()
        self.post_message(self.Submitted(text))

    # -- history -----------------------------------------------------------------------------------

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0 and self.sent:
            if self._history_pos is None:
                self._draft, self._history_pos = self.text, len(self.sent)
            if self._history_pos > 0:
                self._history_pos -= 1
                self._show(self.sent[self._history_pos])
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        last_row = self.document.line_count - 1
        if not select and self._history_pos is not None and self.cursor_location[0] == last_row:
            self._history_pos += 1
            if self._history_pos >= len(self.sent):
                self._history_pos = None
                self._show(self._draft)
            else:
                self._show(self.sent[self._history_pos])
            return
        super().action_cursor_down(select)

    def _show(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)

    # -- completion --------------------------------------------------------------------------------

    def update_suggestion(self) -> None:
        if self._suggest is None or self.cursor_location != self.document.end:
            self.suggestion = ""
            return
        full = self._suggest(self.text)
        self.suggestion = full[len(self.text):] if full and full.startswith(self.text) else ""
