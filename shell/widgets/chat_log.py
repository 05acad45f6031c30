"""The scrolling chat log: user turns, streamed assistant replies, inline command output and errors."""

from __future__ import annotations

from textual.containers import VerticalScroll

from .chat_message import ChatMessage
from .streamed_blocks import LaidOutOnce


class ChatLog(LaidOutOnce, VerticalScroll):
    """Messages stacked bottom-up (anchored: short content sits at the bottom, long content stays
    scrolled to the end).

    Every change to the messages repaints the whole log. Growing one message moves every message
    above it (bottom anchoring), and Textual 8 can miss such a move: a region lookup between a mount
    and the next layout (a new Markdown block asks its parent's size) rebuilds the compositor's map
    without recording what moved, so the following update repaints only the grown message and the
    terminal keeps blank or stale lines where the others now are (tests/test_shell_terminal.py). A
    repaint of the log's region is drawn from the current map and costs one frame of its lines."""
    DEFAULT_CSS = """
    ChatLog {
        height: 1fr;
        padding: 0 1;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.can_focus = False

    def on_mount(self) -> None:
        self.anchor()

    async def add(self, text: str, role: str = "info") -> ChatMessage:
        message = ChatMessage(text, role)
        await self.mount(message)
        self.anchor()
        self.refresh()
        return message

    async def clear(self) -> None:
        await self.remove_children()
        self.refresh()

    async def show(self, messages: list[dict]) -> None:
        """Replace the log with stored chat messages (user and assistant turns; the rest as info)."""
        await self.clear()
        for m in messages:
            role = m.get("role")
            await self.add(str(m.get("content", "")), role if role in ("user", "assistant") else "info")

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self.query(ChatMessage))
