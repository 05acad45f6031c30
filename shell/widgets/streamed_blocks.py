"""Markdown blocks that a streamed reply updates in place (ChatMessage.BLOCKS puts them in Textual's).

Boundaries: Textual's `Markdown.append` re-parses the reply from the start of its last top-level block
and hands the new block to the mounted one's `_update_from_block`. Textual updates a paragraph in place
but removes and mounts a list again: a list that is the reply's last block (chat replies are list-heavy)
was remounted whole on every frame, the widgets of all its items built, styled and laid out again, and
thrown away as cyclic garbage (~900k objects over a 2,000-token reply, one 0.85 s collection at its
end). Here a list grows where it is: changed paragraphs get their new text, new blocks and items are
mounted beside the old ones, a block inside an item that changed kind is replaced alone. Anything
else (fewer items, an ordered list whose numbers change width) falls back to Textual's remount, so
what is shown is always what the source says (tests/test_shell_terminal.py compares a streamed reply
with the whole text rendered at once by Textual's own blocks).
"""

from __future__ import annotations

from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets._markdown import (
    MarkdownBlock,
    MarkdownBullet,
    MarkdownBulletList,
    MarkdownListItem,
    MarkdownOrderedList,
    MarkdownOrderedListItem,
    MarkdownParagraph,
)


class LaidOutOnce:
    """A widget that asks for no second layout when a layout changed its size. Textual's `virtual_size`
    is a reactive that asks for a layout when set, and the layout pass itself sets it: every layout
    that resized a widget was followed by another that changed nothing (measured on a 2,000-token
    reply: 298 layouts, 230 with this on the chat's widgets). Scrollbars still update (a scrollable
    widget's `_size_updated` refreshes them either way)."""

    def _size_updated(self, size, virtual_size, container_size, layout: bool = True) -> bool:
        return super()._size_updated(size, virtual_size, container_size, layout=False)  # type: ignore[misc]


def _same_content(a: Content, b: Content) -> bool:
    return a.plain == b.plain and list(a.spans) == list(b.spans)


#: a paragraph that streams grows in steps of this many lines: the lines below its text wait blank,
#: so the words that fill them repaint the paragraph alone (no layout, no scroll of the whole log)
RESERVE_LINES = 4


class StreamedParagraph(LaidOutOnce, MarkdownParagraph):
    """A paragraph that grows without a layout while its height stays the same: a streamed reply
    mostly adds words to the last line, and a layout (every widget on the screen arranged again, and,
    with the log scrolled to its end, every line of it painted again) costs many times the repaint of
    one paragraph; the cores it takes are the model's. While its message streams (`reserving`), the
    paragraph's height grows RESERVE_LINES at a time, so a line wrap inside that height needs no
    layout either; `release()` gives the blank lines back (the message calls it when another block
    becomes its last, and when its stream stops)."""

    _height_at: tuple[int, int] | None = None  # (width, height) of the content shown
    _reserved = 0  # the height held for the text while it streams (0: none)

    def set_content(self, content: Content, reserve: bool = False) -> None:
        width = self.content_region.width
        if width <= 0 or not isinstance(getattr(self, "_content", None), Content):
            self._height_at = None
            super().set_content(content)
            return
        if self._height_at is None or self._height_at[0] != width:
            self._height_at = (width, self._content.get_height(self.styles, width))
        before = max(self._height_at[1], self._reserved)
        height = content.get_height(self.styles, width)
        if reserve and height > self._reserved:
            self._reserved = -(-height // RESERVE_LINES) * RESERVE_LINES
            self.styles.min_height = self._reserved
            self._markdown.reserved_by(self)  # type: ignore[attr-defined]
        self._height_at = (width, height)
        self._content = content
        self.update(content, layout=max(height, self._reserved) != before)

    def on_mount(self) -> None:
        if getattr(self._markdown, "reserving", False):  # a new last paragraph of a streaming message
            self._reserved = RESERVE_LINES
            self.styles.min_height = RESERVE_LINES
            self._markdown.reserved_by(self)  # type: ignore[attr-defined]

    def release(self) -> None:
        """Give back the lines held below the text."""
        if self._reserved:
            self._reserved = 0
            self.styles.min_height = None

    async def _update_from_block(self, block: MarkdownBlock) -> None:
        if isinstance(block, MarkdownParagraph):
            self.take(block)
        else:
            await super()._update_from_block(block)

    def take(self, block: MarkdownParagraph) -> None:
        """Show `block`'s text (a freshly parsed twin of this paragraph), repainting only if it differs."""
        if not _same_content(self._content, block._content):
            self.set_content(block._content, reserve=getattr(self._markdown, "reserving", False))
        self._copy_context(block)


def _symbols(block: MarkdownBlock, items: list[MarkdownListItem]) -> list[str]:
    """The bullets Textual's compose would give these items (ordered: numbers padded to one width)."""
    if not isinstance(block, MarkdownOrderedList):
        return [item.bullet for item in items]
    start = 1
    if items and isinstance(items[0], MarkdownOrderedListItem):
        try:
            start = int(items[0].bullet)
        except ValueError:
            pass
    numbers = [f"{n}. " for n in range(start, start + len(items))]
    size = max((len(s) for s in numbers), default=0)
    return [s.rjust(size + 1) for s in numbers]


class _Row(LaidOutOnce, Horizontal):
    """One list item: its bullet, then its blocks."""


class _Body(LaidOutOnce, Vertical):
    """A list item's blocks."""


class _Bullet(LaidOutOnce, MarkdownBullet):
    pass


def _row(item: MarkdownListItem, symbol: str) -> _Row:
    bullet = _Bullet()
    bullet.symbol = symbol
    return _Row(bullet, _Body(*item._blocks))


def _rows(mounted: Widget) -> list[tuple[MarkdownBullet, Vertical]]:
    """A mounted list's items as (bullet, the item's blocks) pairs."""
    rows = []
    for row in mounted.children:
        bullet, body = row.children if len(row.children) == 2 else (None, None)
        if not isinstance(row, Horizontal) or not isinstance(bullet, MarkdownBullet) or not isinstance(body, Vertical):
            return []
        rows.append((bullet, body))
    return rows


def _fits(mounted: Widget, block: MarkdownBlock) -> bool:
    """Whether `mounted` can become `block` in place: a paragraph another paragraph; a list the same
    kind of list, every mounted item still there (more may follow), bullets unchanged, and no item with
    fewer blocks (a block of another kind inside an item is replaced alone, see `_become`)."""
    if type(mounted) is not type(block):
        return False
    if isinstance(mounted, StreamedParagraph):
        return True
    if not isinstance(mounted, (StreamedBulletList, StreamedOrderedList)):
        return False
    items = [b for b in block._blocks if isinstance(b, MarkdownListItem)]
    rows = _rows(mounted)
    if len(rows) != len(mounted.children) or len(items) != len(block._blocks) or len(items) < len(rows):
        return False
    return all(bullet.symbol == symbol and len(item._blocks) >= len(body.children)
               for (bullet, body), item, symbol in zip(rows, items, _symbols(block, items)))


async def _become(mounted: MarkdownBlock, block: MarkdownBlock) -> None:
    """Update `mounted` to show `block` (checked by `_fits`): text in place, new parts mounted, a block
    of another kind replaced where it is."""
    mounted._copy_context(block)
    if isinstance(mounted, StreamedParagraph):
        mounted.take(block)
        return
    items = [b for b in block._blocks if isinstance(b, MarkdownListItem)]
    rows = _rows(mounted)
    for (_bullet, body), item in zip(rows, items):
        old = list(body.children)
        for widget, new in zip(old, item._blocks):
            if _fits(widget, new):
                await _become(widget, new)
            else:  # e.g. "text\n-" reads as a heading until the next item's words arrive
                await body.mount(new, before=widget)
                await widget.remove()
        if len(item._blocks) > len(old):
            await body.mount_all(item._blocks[len(old):])
    symbols = _symbols(block, items)
    if len(items) > len(rows):
        await mounted.mount_all([_row(item, symbol) for item, symbol in zip(items[len(rows):], symbols[len(rows):])])


class _StreamedList(LaidOutOnce):
    def compose(self):
        items = [b for b in self._blocks if isinstance(b, MarkdownListItem)]  # type: ignore[attr-defined]
        yield from (_row(item, symbol) for item, symbol in zip(items, _symbols(self, items)))
        self._blocks.clear()  # type: ignore[attr-defined]

    async def _update_from_block(self, block: MarkdownBlock) -> None:
        if _fits(self, block):
            await _become(self, block)
        else:
            await super()._update_from_block(block)  # type: ignore[misc]


class StreamedBulletList(_StreamedList, MarkdownBulletList):
    """A bullet list that grows in place."""


class StreamedOrderedList(_StreamedList, MarkdownOrderedList):
    """An ordered list that grows in place."""
