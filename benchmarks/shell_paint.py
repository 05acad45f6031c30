"""B8a's measuring child: the shell's chat view in a real terminal (a pty the benchmark drains), fed
fake tokens at a fixed rate, timing each token from its emission to the write of the first frame
that paints it.

Run as `python -m llmos.benchmarks.shell_paint OUT.json N RATE` with its stdout on a terminal. The
driver tags every frame it queues with the characters rendered so far (a str subclass carries the tag
through Textual's writer thread), and the terminal file records when each tagged frame was flushed:
a token is painted by the first flush whose frame holds its characters. OUT.json gets
`{"emitted": [[chars, t]...], "painted": [[chars, t]...], "rendered": [[chars, t]...]}` (perf_counter).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import IO

from textual.drivers.linux_driver import LinuxDriver


class _Frame(str):
    chars: int = 0  # reply characters rendered when this frame was queued


class _Clock:
    def __init__(self) -> None:
        self.rendered: list[tuple[int, float]] = []
        self.painted: list[tuple[int, float]] = []
        self.rendered_chars = 0  # high-water mark of rendered characters
        self.written_chars = 0  # ... of characters in frames written to the terminal

    def shown(self, chars: int, t: float) -> None:
        self.rendered_chars = max(self.rendered_chars, chars)
        self.rendered.append((chars, t))


CLOCK = _Clock()


class _TimedTerminal:
    """The driver's terminal file: notes which frames were written, and when they were flushed."""

    def __init__(self, inner: IO[str]) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        CLOCK.written_chars = max(CLOCK.written_chars, getattr(text, "chars", 0))
        return self._inner.write(text)

    def flush(self) -> None:
        self._inner.flush()
        CLOCK.painted.append((CLOCK.written_chars, time.perf_counter()))

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class PaintTimedDriver(LinuxDriver):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._file = _TimedTerminal(self._file)

    def write(self, data: str) -> None:
        frame = _Frame(data)
        frame.chars = CLOCK.rendered_chars
        super().write(frame)


def main(out: str, n: int, rate: float) -> None:
    from llmos.shell.app import ShellApp

    from .shell_bench import fake_tokens

    tokens = fake_tokens(n)
    emitted: list[tuple[int, float]] = []
    app = ShellApp(boot=False)
    app.driver_class = PaintTimedDriver

    async def pilot_run(pilot) -> None:
        message = await app.begin_reply()
        message.on_shown = CLOCK.shown

        def produce() -> None:
            total, start = 0, time.perf_counter()
            for i, tok in enumerate(tokens):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                total += len(tok)
                emitted.append((total, time.perf_counter()))
                app.feed(tok)

        feeder = threading.Thread(target=produce, daemon=True)
        feeder.start()
        # asyncio.sleep, not pilot.pause: a pause sends a message to every widget and forces a
        # screen update, work the shell does not do while streaming (it added ~15% to the view's CPU)
        while feeder.is_alive():
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 30
        while CLOCK.written_chars < emitted[-1][0] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        app.post_message(ShellApp.ReplyDone("done"))
        await pilot.pause(0.1)
        app.exit()

    app.run(auto_pilot=pilot_run)
    with open(out, "w") as fh:
        json.dump({"emitted": emitted, "painted": CLOCK.painted, "rendered": CLOCK.rendered}, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
