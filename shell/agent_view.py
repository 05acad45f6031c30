"""An agent's events in the chat log: its model output streamed as dim "thinking" text, then each
step, tool call, tool result, answer and error as a message of its own."""

from __future__ import annotations

from typing import Any, Callable

from llmos.kernel.errors import LlmosError

from .commands import state_name
from .streaming import ReplyStream
from .widgets.chat_log import ChatLog


def relay(proc: Any, post: Callable[..., None]) -> None:
    """From a worker thread: `post(kind, text, step, data)` for each of the process's events, then
    `post("done", final state)`; an error reading them is posted as an error event."""
    try:
        for ev in proc.events():
            post(ev.kind, ev.text or "", ev.step, getattr(ev, "data", None))
    except LlmosError as exc:
        post("error", str(exc))
    finally:
        post("done", state_name(getattr(proc, "state", "")))


class AgentView:
    def __init__(self, pace: Callable[[], float] | None = None) -> None:
        self._stream: ReplyStream | None = None  # the "thinking" text streaming now
        self._pace = pace  # the shell's frame pacer (shell/pacing.py)

    async def show(self, log: ChatLog, kind: str, text: str, step: int, data: dict[str, Any]) -> None:
        if kind == "token":
            if self._stream is None:
                self._stream = await ReplyStream(log, "thinking", pace=self._pace).start()
            await self._stream.write(text)
            return
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if kind == "step":
            await log.add(f"step {step}: {text}" if text else f"step {step}", "info")
        elif kind == "tool_call":
            await log.add(f"-> `{text or data.get('name', '?')}` {data.get('arguments', '')}", "info")
        elif kind == "tool_result":
            await log.add(f"<- {text}"[:2000], "info")
        elif kind == "answer":
            await log.add(text, "assistant")
        elif kind == "error":
            await log.add(text, "error")
