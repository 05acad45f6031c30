"""The chat view as a terminal shows it: Textual's screen updates replayed, in order, onto a grid.

Pilot's screenshots render the whole screen from the widget tree, so they cannot see a part of the
screen the app forgot to repaint; a real terminal only ever receives the updates. `Terminal` keeps
what those updates wrote, like the tmux test's capture-pane, without a model or a tmux."""

from __future__ import annotations

import asyncio
import re

from rich.cells import cell_len

from llmos.shell.app import ShellApp

from .test_shell import until

#: a cursor move (ESC [ row ; col H), any other control sequence, a hyperlink, or one character
_TOKEN = re.compile(r"\x1b\[(\d+);(\d+)H|\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\n|.", re.S)


class Terminal:
    """The characters a terminal would show after the app's screen updates (styles dropped)."""

    def __init__(self, app: ShellApp) -> None:
        width, height = app.size
        self.rows = [[" "] * width for _ in range(height)]
        display = app._display

        def capture(screen, update) -> None:
            if update is not None and hasattr(update, "render_segments") and not app._batch_count:
                self.write(update.render_segments(app.console))  # what the terminal driver would be sent
            display(screen, update)

        app._display = capture

    def write(self, data: str) -> None:
        y = x = 0
        for match in _TOKEN.finditer(data):
            token = match.group(0)
            if match.group(1):
                y, x = int(match.group(1)) - 1, int(match.group(2)) - 1
            elif not token.startswith("\x1b") and token != "\n":
                if 0 <= y < len(self.rows) and 0 <= x < len(self.rows[y]):
                    self.rows[y][x] = token
                x += cell_len(token)

    @property
    def text(self) -> str:
        return "\n".join("".join(row).rstrip() for row in self.rows)


def widgets_text(app: ShellApp) -> str:
    """The screen as the widgets are now (a full render), in the same form as `Terminal.text`."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips())


async def reply(app: ShellApp, pilot, tokens: list[str]) -> None:
    """Stream `tokens` as a reply after the empty reply has been drawn, the way a model's arrive."""
    await app.begin_reply()
    await pilot.pause(0.2)
    for token in tokens:
        app.feed(token)
        await pilot.pause(0.06)
    app.post_message(ShellApp.ReplyDone("done"))
    await until(pilot, lambda: app.reply is None, 10, "the reply to finish")
    await pilot.pause(0.2)


QUESTION = "What is the capital of France?"
PARIS = ["The", " capital", " of", " France", " is", " Paris", "."]


def test_the_terminal_shows_every_message_while_replies_stream_in():
    """The tmux test's failure without its timing: a reply's first render moves the question above
    it (short content sits at the bottom of the log) and Textual's diff can miss that move; the
    old view then left the question's new lines blank on the terminal for good. Then a long reply
    that scrolls the log and is split into segments."""

    async def go() -> None:
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)) as pilot:
            terminal = Terminal(app)
            for turn in range(3):
                await app.chat_log.add(f"{QUESTION} ({turn})", "user")
                await reply(app, pilot, PARIS)
                assert f"{QUESTION} ({turn})" in widgets_text(app)  # the widgets are right...
                assert terminal.text == widgets_text(app), terminal.text  # ...and the terminal shows them
                assert terminal.text.count("The capital of France is Paris.") == turn + 1, terminal.text
            await app.chat_log.add("Tell me about Paris.", "user")
            await reply(app, pilot, [f"Paragraph {i} about Paris, its river and its bridges.\n\n" for i in range(40)])
            assert "Paragraph 39" in terminal.text and terminal.text == widgets_text(app), terminal.text

    asyncio.run(asyncio.wait_for(go(), 120))


def test_a_paragraph_growing_within_its_lines_repaints_without_a_layout():
    """Streaming mostly adds words to a paragraph's last line: that costs a repaint of the paragraph,
    not a layout of the whole screen; a word that starts a new line asks for a layout, and both show."""
    from llmos.shell.widgets.streamed_blocks import StreamedParagraph

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)) as pilot:
            terminal = Terminal(app)
            message = await app.chat_log.add("Hello", "assistant")
            await pilot.pause(0.05)
            paragraph = message.query_one(StreamedParagraph)
            layouts = []
            original = paragraph.update
            paragraph.update = lambda content, layout=True: (layouts.append(layout), original(content, layout=layout))
            await message.append(" there")
            await pilot.pause(0.05)
            await message.append(" " + "long words wrap " * 12)
            await pilot.pause(0.05)
            assert layouts == [False, True]
            shown = widgets_text(app)
            assert "Hello there" in shown and "long words wrap" in shown.split("Hello there", 1)[1]
            assert terminal.text == shown, terminal.text  # what was painted, not only the widgets
    asyncio.run(asyncio.wait_for(go(), 60))


LISTS = """Steps to follow:

- first item with **bold** words
- second item
  - nested one
  - nested two that runs long enough to wrap onto a second line of the terminal
- third item

  with a second paragraph
- fourth item with steps
  1. nested first
  2. nested second
- fifth item with code

  ```python
  print("in a list")
  ```

1. one
2. two
3. three
4. four
5. five
6. six
7. seven
8. eight
9. nine
10. ten

Done."""


def test_lists_grow_in_place_and_show_what_a_fresh_render_shows():
    """A list that is the reply's last block keeps its widgets while it grows (Textual mounted it again
    on every frame); the streamed reply's screen is the same as the whole text rendered at once, and
    the terminal shows it. The ordered list's tenth item widens its numbers: that one remounts."""
    from textual.widgets import Markdown

    from llmos.shell.widgets.chat_message import ChatMessage
    from llmos.shell.widgets.streamed_blocks import StreamedBulletList

    tokens = [piece for piece in re.split(r"(\s+)", LISTS) if piece]

    async def streamed() -> tuple[str, int]:
        app = ShellApp(boot=False)
        async with app.run_test(size=(60, 60)) as pilot:
            terminal = Terminal(app)
            await app.begin_reply()
            await pilot.pause(0.1)
            first_list, lists = None, set()
            for i, token in enumerate(tokens):
                app.feed(token)
                if i % 3 == 0:
                    await pilot.pause(0.06)
                    for found in app.chat_log.query(StreamedBulletList):
                        if isinstance(found.parent, ChatMessage):  # the top-level list, not a nested one
                            first_list = first_list or found
                            lists.add(id(found))
            app.post_message(ShellApp.ReplyDone("done"))
            await until(pilot, lambda: app.reply is None, 10, "the reply to finish")
            await pilot.pause(0.2)
            assert first_list is not None and first_list.is_attached
            assert terminal.text == widgets_text(app), terminal.text
            return widgets_text(app), len(lists)

    class TextualBlocks(ChatMessage):  # the message's styling, Textual's own Markdown blocks
        BLOCKS = Markdown.BLOCKS

    async def at_once() -> str:
        app = ShellApp(boot=False)
        async with app.run_test(size=(60, 60)) as pilot:
            await app.chat_log.mount(TextualBlocks(LISTS, "assistant"))
            await pilot.pause(0.3)
            assert not app.chat_log.query(StreamedBulletList)
            return widgets_text(app)

    shown, lists_seen = asyncio.run(asyncio.wait_for(streamed(), 120))
    assert lists_seen == 1  # one bullet-list widget from its first item to the end
    reply_part = shown.split("Done.")[0]  # the status line below differs ("reply done" / "ready")
    assert reply_part == asyncio.run(asyncio.wait_for(at_once(), 60)).split("Done.")[0], shown
    assert "nested two" in shown and "10. ten" in shown and "with a second paragraph" in shown
    assert "2. nested second" in shown and 'print("in a list")' in shown


def test_a_streaming_paragraph_grows_lines_at_a_time_and_gives_them_back():
    """While a reply streams, its paragraph's height steps by RESERVE_LINES (a word wrapping inside
    that height repaints the paragraph, no layout and no scroll of the log); when the reply ends the
    blank lines go, and the terminal shows the same as the widgets."""
    from llmos.shell.widgets.streamed_blocks import RESERVE_LINES, StreamedParagraph

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(60, 30)) as pilot:
            terminal = Terminal(app)
            await app.begin_reply()
            await pilot.pause(0.1)
            seen = set()
            for i in range(120):  # ~14 lines of 60 columns
                app.feed(f" word{i}")
                if i % 6 == 5:
                    await pilot.pause(0.08)
                    await pilot.pause()  # idle: the last flush's layout has been applied
                    paragraph = app.reply.message.query_one(StreamedParagraph)
                    lines = paragraph._content.get_height(paragraph.styles, paragraph.content_region.width)
                    assert paragraph.size.height % RESERVE_LINES == 0 and paragraph.size.height >= lines
                    seen.add(paragraph.size.height)
            app.post_message(ShellApp.ReplyDone("done"))
            await until(pilot, lambda: app.reply is None, 10, "the reply to finish")
            await pilot.pause(0.2)
            paragraph = app.chat_log.messages[-1].query_one(StreamedParagraph)
            lines = paragraph._content.get_height(paragraph.styles, paragraph.content_region.width)
            assert len(seen) >= 3 and paragraph.size.height == lines > RESERVE_LINES * 2
            assert "word119" in widgets_text(app) and terminal.text == widgets_text(app), terminal.text
    asyncio.run(asyncio.wait_for(go(), 60))
