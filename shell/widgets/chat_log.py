"""The scrolling chat log: user turns, streamed assistant replies, inline command output and errors."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from .chat_message import ChatMessage
from .streamed_blocks import LaidOutOnce

#: messages the log keeps mounted; older ones leave it (a stored chat keeps its turns). Textual lays out
#: every widget of the log, shown or not, each time a streamed reply wraps a line or starts a block:
#: after 40 exchanges the paint p95 of a streamed story doubled (53 -> 107 ms, measured on a pty)
KEEP_MESSAGES = 50


class EarlierNote(LaidOutOnce, Static):
    """The log's first line once messages have left it: how many, and where they still are."""

    DEFAULT_CSS = """
    EarlierNote {
        color: $text-muted;
        padding: 0 1;
        margin: 0 0 1 0;
    }
    """


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
        self.earlier = 0  # messages that left the log (or were never shown: a long resumed session)

    def on_mount(self) -> None:
        self.anchor()

    async def add(self, text: str, role: str = "info") -> ChatMessage:
        """A new message at the end; older ones beyond KEEP_MESSAGES leave the log (see _keep_last)."""
        message = ChatMessage(text, role)
        await self.mount(message)
        await self._settle()
        return message

    async def _settle(self) -> None:
        """After messages were mounted: the bound kept, the view at the end, the log repainted (see above)."""
        await self._keep_last(KEEP_MESSAGES)
        self.anchor()
        self.refresh()

    async def _keep_last(self, keep: int) -> None:
        """Unmount all but the last `keep` messages, and say how many have gone in the note at the top."""
        leaving = []
        messages = self.messages
        for message in messages[:max(0, len(messages) - keep)]:
            if message.streaming:
                break  # a reply still streaming stays whole, and so does everything after it
            leaving.append(message)
        if leaving:
            await self.remove_children(leaving)
            self.earlier += len(leaving)
        notes = self.query(EarlierNote)
        if not self.earlier or (notes and not leaving):
            return  # nothing to say, or the note already says it (no repaint per message added)
        text = (f"{self.earlier} earlier message{'s' if self.earlier != 1 else ''} not shown here "
                "(a stored chat keeps its turns: llmos sessions export)")
        if notes:
            notes.first().update(text)
        else:
            await self.mount(EarlierNote(text, markup=False), before=0)

    async def clear(self) -> None:
        await self.remove_children()
        self.earlier = 0
        self.refresh()

    async def show(self, messages: list[dict], earlier: int = 0) -> None:
        """Replace the log with stored chat messages (user and assistant turns; the rest as info);
        `earlier`: the conversation's messages before these, noted at the top. Mounted in one batch
        (one layout, not one per message)."""
        await self.clear()
        self.earlier = earlier
        roles = ("user", "assistant")
        await self.mount_all([ChatMessage(str(m.get("content", "")), m.get("role") if m.get("role") in roles else "info")
                              for m in messages])
        await self._settle()

    @property
    def messages(self) -> list[ChatMessage]:
        return [child for child in self.children if isinstance(child, ChatMessage)]
