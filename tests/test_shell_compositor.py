"""The chat screen's compositor (shell/screens/chat.py) writes the same cells as Textual's own for any
partial update, rendering fewer lines: checked on the real shell (Pilot) with a scrolled log, a reply
mid-stream and widgets cut by their container."""

from __future__ import annotations

import asyncio
import random

from textual._compositor import Compositor
from textual.geometry import Region
from textual.widget import Widget

from llmos.shell.app import ShellApp
from llmos.shell.screens.chat import CroppedCompositor

from .test_shell import run


def _update(compositor, console, regions, renders=None) -> str:
    """The terminal output of a partial update of `regions`, by `renders` (default: the compositor's own)."""
    if renders is not None:
        compositor._get_renders = renders.__get__(compositor)
    try:
        compositor._dirty_regions = set(regions)
        update = compositor.render_partial_update()
    finally:
        compositor.__dict__.pop("_get_renders", None)
    return update.render_segments(console)


def test_the_cropped_compositor_writes_what_textuals_writes_and_renders_less(monkeypatch):
    lines = {"n": 0}
    render_lines = Widget.render_lines

    def counting(self, crop):
        lines["n"] += crop.height
        return render_lines(self, crop)

    monkeypatch.setattr(Widget, "render_lines", counting)

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)) as pilot:
            assert CroppedCompositor.fits() and isinstance(app.screen._compositor, CroppedCompositor)
            for i in range(12):
                await app.chat_log.add(f"message {i}\n\n- a list item\n- another, with **bold**", "user")
            await app.begin_reply()
            for i in range(60):
                app.feed(f"word{i} " + ("\n\n" if i % 20 == 19 else ""))
            await asyncio.sleep(0.3)
            await pilot.pause()
            compositor = app.screen._compositor
            width, height = compositor.size
            rng = random.Random(7)
            regions = [[Region(0, 0, width, height)], [Region(2, height - 6, 40, 3)], [Region(0, 0, width, 1)],
                       [Region(5, 3, 10, 2), Region(30, 15, 20, 4)]]
            for _ in range(60):
                x, y = rng.randrange(width), rng.randrange(height)
                regions.append([Region(x, y, rng.randint(1, width - x), rng.randint(1, height - y))])
            cropped_lines = textual_lines = 0
            for dirty in regions:
                lines["n"] = 0
                ours = _update(compositor, app.console, dirty)
                cropped_lines += lines["n"]
                lines["n"] = 0
                textuals = _update(compositor, app.console, dirty, Compositor._get_renders)
                textual_lines += lines["n"]
                assert ours == textuals, dirty
            assert cropped_lines < textual_lines / 2, (cropped_lines, textual_lines)
    run(go())
