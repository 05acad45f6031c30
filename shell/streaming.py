"""Streaming a reply into the chat log without slowing down as it grows, or slowing the model.

Two measures on top of Textual's `MarkdownStream` (which already coalesces fragments while a render
is in flight):
- writes reach the stream at most every `interval` seconds (a 150 tok/s source then costs ~20 renders
  a second instead of 150, leaving the CPU to the model), and the text waits in the app's feed, which
  each flush pulls (`source`): tokens between two flushes wake the UI thread not at all; with `pace`
  (the shell's `FramePacer`, shell/pacing.py) the interval is asked anew at each flush: 20 Hz on a
  free core, 10 Hz while the machine's cores are busy (a model decoding on them);
- a long reply is split at paragraph breaks into segments of about `segment_chars` (each its own
  Markdown widget, styled as one message), so each render re-lays out a small widget and the cost
  per token stays flat over a 2,000-token reply;
- while a segment streams (`ChatMessage.reserving`), its last paragraph grows a few lines at a time
  (widgets/streamed_blocks.py): words filling the lines held below the text repaint that paragraph
  only; the lines are given back when the segment stops (`ChatMessage.settle`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from textual.widgets import Markdown

from llmos.kernel.errors import LlmosError

from .widgets.chat_log import ChatLog
from .widgets.chat_message import ChatMessage


class Feed:
    """Reply text from a worker thread, drained by the UI thread (the reply's next flush). `put` says
    whether the caller should post a wake-up: one until the next `drain`, so tokens arriving between
    two flushes wake nothing."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self._posted = False

    def put(self, text: str) -> bool:
        with self._lock:
            self._parts.append(text)
            if self._posted:
                return False
            self._posted = True
            return True

    def drain(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
            self._posted = False
        return text


class ReplyStream:
    def __init__(self, log: ChatLog, role: str = "assistant", *, interval: float = 0.05,
                 segment_chars: int = 1200, source: Callable[[], str] | None = None,
                 pace: Callable[[], float] | None = None) -> None:
        self.log, self.role = log, role
        self.source = source  # pulled at each flush (the app's Feed): text waits there, not in messages
        self.pace = pace  # asked at each flush for the interval to the next one
        self.interval, self.segment_chars = interval, segment_chars
        self.segments: list[ChatMessage] = []
        self.on_shown: Callable[[int, float], None] | None = None  # (characters rendered, perf_counter)
        self._stream = None
        self._pending: list[str] = []
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._done_chars = 0  # characters in finished segments
        self._written = 0  # characters handed to the current segment's stream
        self._fences = 0  # "```" in the current segment (odd: inside a code block)
        self._shown_max = 0
        self._lock = asyncio.Lock()  # one flush at a time (a split stops and replaces the stream)

    @property
    def message(self) -> ChatMessage:
        return self.segments[-1]

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.segments) + "".join(self._pending)  # splits dropped a "\n\n"

    async def start(self) -> "ReplyStream":
        await self._new_segment()
        return self

    async def _new_segment(self) -> None:
        if self.segments:
            self.segments[-1].add_class("continued-by")
        message = await self.log.add("", self.role)
        if self.segments:
            message.add_class("continues")
        offset = self._done_chars
        message.on_shown = lambda chars, t: self._shown(offset + chars, t)
        message.reserving = message.streaming = True
        self.segments.append(message)
        self._stream = Markdown.get_stream(message)
        self._written = self._fences = 0

    def _shown(self, chars: int, t: float) -> None:
        # a stopped segment's last render can finish after the next segment's first: report the
        # high-water mark so readers see a growing count
        if chars > self._shown_max:
            self._shown_max = chars
            if self.on_shown is not None:
                self.on_shown(chars, t)

    async def write(self, text: str = "") -> None:
        """Queue `text` (and whatever `source` holds by then) for the next flush: now when the last
        one is `interval` old, else on a timer. `write()` with no text just wakes the stream."""
        if text:
            self._pending.append(text)
        wait = self._last_flush + self.interval - time.monotonic()
        if wait <= 0:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.source is not None:
            self._pending.append(self.source())
        text = "".join(self._pending)
        self._pending.clear()
        self._last_flush = time.monotonic()
        if self.pace is not None:
            self.interval = self.pace()
        if not text or self._stream is None:
            return
        cut = text.rfind("\n\n")
        if self._written + len(text) >= self.segment_chars and cut > 0 \
                and (self._fences + text[:cut].count("```")) % 2 == 0:  # never split inside a code fence
            head, tail = text[:cut], text[cut + 2:]
            await self._stream.write(head)
            await _stop(self._stream)
            self.message.settle()
            self._done_chars += self._written + len(head) + 2
            await self._new_segment()
            text = tail
        self._written += len(text)
        self._fences += text.count("```")
        await self._stream.write(text)

    async def stop(self) -> None:
        await self.flush()
        if self._stream is not None:
            await _stop(self._stream)
            self._stream = None
            self.message.settle()
        for segment in self.segments:
            segment.streaming = False

    async def append_note(self, markdown: str) -> None:
        """Text after the reply (a cancelled marker, sources), once the stream has stopped."""
        await self.message.append(markdown)


async def _stop(stream) -> None:
    """Stop a Textual `MarkdownStream` once its task has started. `stop` cancels the task; a task
    cancelled before its first step never enters its own `try` (so the text written to it is lost) and
    raises CancelledError into `stop`'s caller: the handler ending the reply was cancelled with it, and
    the shell stayed busy. A segment made by the last flush and stopped before the event loop turned
    did exactly that (tests/test_shell_streaming.py::test_a_reply_whose_last_flush_starts_a_segment_still_ends)."""
    await asyncio.sleep(0)  # the stream's task was scheduled when it was made: it runs first
    await stream.stop()


def finished_completion(handle: Any):
    """The finished request's `Completion` (None when there is none: never sent, or its server left)."""
    if handle is None or not handle.done:
        return None
    try:
        return handle.result(check=False)
    except LlmosError:
        return None
