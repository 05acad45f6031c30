"""One message in the chat log: Markdown, styled by role, streamable token by token."""

from __future__ import annotations

import threading
import time
from typing import Callable

from markdown_it import MarkdownIt
from textual.await_complete import AwaitComplete
from textual.widgets import Markdown

from .streamed_blocks import LaidOutOnce, StreamedBulletList, StreamedOrderedList, StreamedParagraph


_parsers = threading.local()


def shared_parser() -> MarkdownIt:
    """The Markdown parser of this thread, made once: Textual builds a new "gfm-like" MarkdownIt (its
    linkify patterns compiled again) for every `append`, about a tenth of the view's CPU while a reply
    streams. A parser keeps no state between `parse` calls, except linkify's last match, hence one per
    thread (Textual parses on the UI thread)."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = MarkdownIt("gfm-like")
    return parser


class ChatMessage(LaidOutOnce, Markdown):
    """A user, assistant, info or error message. Assistant replies stream in through
    `Markdown.get_stream(message)`, which batches fragments while a render is in flight so a fast
    token source never queues renders behind each other."""

    DEFAULT_CSS = """
    ChatMessage {
        margin: 0 0 1 0;
        padding: 0 1;
        background: $surface;
    }
    ChatMessage.user {
        background: $primary 15%;
        border-left: thick $primary;
        margin-left: 4;
    }
    ChatMessage.assistant {
        border-left: thick $accent;
        margin-right: 2;
    }
    ChatMessage.info {
        color: $text-muted;
        background: $panel;
    }
    ChatMessage.continued-by { margin-bottom: 0; }
    ChatMessage.continues { margin-top: 0; }
    ChatMessage.thinking {
        color: $text-muted;
        text-style: italic;
        border-left: thick $panel;
    }
    ChatMessage.command {
        color: $text-muted;
        background: transparent;
        margin: 0 0 0 0;
    }
    ChatMessage.error {
        color: $text-error;
        background: $error 15%;
        border-left: thick $error;
    }
    """

    BLOCKS = {**Markdown.BLOCKS, "paragraph_open": StreamedParagraph, "bullet_list_open": StreamedBulletList,
              "ordered_list_open": StreamedOrderedList}

    def __init__(self, text: str = "", role: str = "assistant", **kwargs) -> None:
        super().__init__(text, classes=role, parser_factory=shared_parser, **kwargs)
        self.role = role
        self.shown_chars = len(text)  # characters whose render has completed
        self.on_shown: Callable[[int, float], None] | None = None  # (shown_chars, perf_counter) hook
        self.reserving = False  # streaming: the last paragraph holds blank lines to grow into
        self._reserver: StreamedParagraph | None = None

    def reserved_by(self, paragraph: StreamedParagraph) -> None:
        """`paragraph` now holds lines to grow into; one paragraph of a message holds them at a time."""
        if self._reserver is not None and self._reserver is not paragraph:
            self._reserver.release()
        self._reserver = paragraph

    def settle(self) -> None:
        """The message's stream stopped: the lines held below its text are given back."""
        self.reserving = False
        if self._reserver is not None:
            self._reserver.release()
            self._reserver = None

    def _last_leaf(self):
        node = self
        while node.children:
            node = node.children[-1]
        return node

    @property
    def text(self) -> str:
        return self.source

    def on_resize(self) -> None:
        if self.parent is not None:
            self.parent.refresh()  # a taller message moved the messages above it (see ChatLog)

    def append(self, markdown: str) -> AwaitComplete:
        rendering = super().append(markdown)

        async def finished() -> None:
            await rendering
            if self._reserver is not None and self._reserver is not self._last_leaf():
                self._reserver.release()  # another block came after it: no blank lines between them
                self._reserver = None
            self.shown_chars += len(markdown)
            if self.on_shown is not None:
                self.on_shown(self.shown_chars, time.perf_counter())

        return AwaitComplete(finished())
