"""The scrolling chat log: user turns, streamed assistant replies, inline command output and errors."""

from __future__ import annotations

from textual.containers import VerticalScroll

from .chat_message import ChatMessage


class ChatLog(VerticalScroll):
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
        return message

    async def clear(self) -> None:
        await self.remove_children()

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self.query(ChatMessage))
