"""The chat's screen (ShellApp's default screen): Textual's Screen with a compositor that renders only
what a partial update shows.

Textual 8's partial update (`Compositor._get_renders`) renders every visible widget whose *clip* (the
area of its container) overlaps the update's bounding box, and each whole: while a reply streams, the
Header, Footer, prompt, the screen's own background and every visible block of the chat render on
every frame to change a line or two, then all but those lines are thrown away. `CroppedCompositor`
renders the widgets whose visible part overlaps the box, and only the box's rows of them. The update
writes the same cells: the lines outside the box were never written, and a widget that was skipped had
nothing inside it (tests/test_shell_compositor.py compares both compositors' updates cell for cell).
A widget's lines left unrendered stay in its line cache, dirty, until a frame shows them.

Measured on a pty (a 463-token story at 80 tokens/s, 4 runs each, alternating): the view's CPU per
reply 1.35 -> 1.08 s, ~0.53 s of it start-up, so the drawing ~0.8 -> ~0.55 s; frames and paint
latency unchanged. Attached to a resident kernel in tmux (B8b's setup, 4 rounds alternating): the
shell's CPU per reply 0.66 -> 0.58 s. On a Textual major version it was not checked against, the
screen keeps Textual's own compositor (`CroppedCompositor.fits`).
"""

from __future__ import annotations

import textual
from textual._compositor import Compositor
from textual.geometry import Region
from textual.screen import Screen

#: Textual major versions whose compositor this was checked against (tests/test_shell_compositor.py)
CHECKED_TEXTUAL = ("8",)


class CroppedCompositor(Compositor):
    @staticmethod
    def fits() -> bool:
        """Whether this Textual is one this override was checked against (the step it replaces is private)."""
        return (textual.__version__.split(".")[0] in CHECKED_TEXTUAL
                and callable(getattr(Compositor, "_get_renders", None)) and hasattr(Compositor, "visible_widgets"))

    def _get_renders(self, crop: Region | None = None):
        """(region, clip, lines) for each visible widget, front to back, as Textual's; with `crop`, only
        widgets whose visible part overlaps it, with the clip narrowed to its rows."""
        if not crop:
            yield from super()._get_renders(crop)
            return
        intersection, overlaps = Region.intersection, crop.overlaps
        for widget, (region, clip) in self.visible_widgets.items():
            clip = intersection(clip, Region(clip.x, crop.y, clip.width, crop.height))
            shown = intersection(region, clip)
            if shown.width and shown.height and overlaps(shown):
                yield region, clip, widget.render_lines(shown.translate(-region.offset))


class ChatScreen(Screen):
    """The default screen of the shell (the chat log, the prompt): Textual's, redrawing less per frame."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if CroppedCompositor.fits():
            self._compositor = CroppedCompositor()
