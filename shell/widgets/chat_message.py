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


class ThreadParser:
    """What the chat's Markdown widgets get as their parser: `parse` runs on the calling thread's own
    `MarkdownIt("gfm-like")`, made once per thread. Textual otherwise builds a new parser (its linkify
    patterns compiled again) for every `append`, about a tenth of the view's CPU while a reply streams.
    Per thread, looked up at each call: `append` parses on the UI thread, `update` (every message's
    mount) in a worker thread, and a parser builds its rule caches on first use."""

    def parse(self, src: str, env: dict | None = None):
        parser = getattr(_parsers, "parser", None)
        if parser is None:
            parser = _parsers.parser = MarkdownIt("gfm-like")
        return parser.parse(src, env)


_THREAD_PARSER = ThreadParser()


def shared_parser() -> ThreadParser:
    """Textual's `parser_factory` for the chat (see ThreadParser)."""
    return _THREAD_PARSER


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
        self.streaming = False  # a segment of a reply still streaming (the log keeps it and all after it)
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
