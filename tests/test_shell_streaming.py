"""The shell's reply streaming and chat log without a kernel: segments, wake-ups per frame, a reply's
end, the log's bound, the shared Markdown parser, and B8a's paint harness (the view on a real pty)."""

from __future__ import annotations

import asyncio
import threading
import time

from llmos.shell.app import ShellApp
from llmos.shell.widgets import ChatMessage

from .test_shell import run, until


async def stream_from_a_thread(app: ShellApp, pilot, tokens: list[str], gap: float) -> None:
    """Feed `tokens` into the app's reply from another thread, `gap` seconds apart, as a reply's worker
    does; then end the reply and wait until the app has finished it."""
    def produce() -> None:
        for tok in tokens:
            app.feed(tok)
            time.sleep(gap)

    feeder = threading.Thread(target=produce)
    feeder.start()
    while feeder.is_alive():
        await pilot.pause(0.02)
    app.post_message(ShellApp.ReplyDone("done"))
    await until(pilot, lambda: app.last_reply, 10)


def test_long_reply_streams_in_segments_without_losing_text():
    from llmos.benchmarks.shell_bench import fake_tokens

    tokens = fake_tokens(600) + ["\n\n```python\nprint('a fence is never split')\n\n\nx = 1\n```\n", " end."]

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)) as pilot:
            reply = await app.begin_reply()
            shown = []
            reply.on_shown = lambda chars, t: shown.append(chars)
            for i, tok in enumerate(tokens):
                app.feed(tok)
                if i % 50 == 0 or "```" in tok:
                    await pilot.pause(0.03)
            app.post_message(ShellApp.ReplyDone("done"))
            await until(pilot, lambda: app.last_reply, 10)
            assert app.last_reply["text"] == "".join(tokens)
            assert len(reply.segments) > 1 and all(s.text.count("```") % 2 == 0 for s in reply.segments)
            assert shown == sorted(shown) and shown[-1] == len("".join(tokens))
    run(go())


def test_a_fast_token_source_wakes_the_view_about_once_per_frame_not_per_token():
    """Tokens fed between two flushes wait in the feed: the UI gets one wake-up message until the next
    flush drains it, so 300 tokens fed over ~0.5 s cost a handful of wake-ups and renders, and every
    character still arrives in order."""
    tokens = [f" w{i}" for i in range(300)]

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)) as pilot:
            reply = await app.begin_reply()
            reply.pace = None  # a fixed rate (not the machine's load): the bound below counts its frames
            woken = []
            original = app.post_message
            app.post_message = lambda m: (woken.append(m) if isinstance(m, ShellApp.Token) else None, original(m))[1]
            await stream_from_a_thread(app, pilot, tokens, gap=0.0015)
            assert app.last_reply["text"] == "".join(tokens)
            frames = 0.5 / reply.interval  # the feed lasts >= 0.45 s: about this many flushes
            assert 2 <= len(woken) <= 2 * frames + 4, (len(woken), frames)
    run(go())


def test_a_reply_whose_last_flush_starts_a_segment_still_ends():
    """The last flush of a long reply can start a new segment (its text crossed the segment size and
    ended with a paragraph break) and the reply stops at once: Textual's MarkdownStream, stopped before
    its task ran, raised CancelledError into the handler ending the reply, and the shell stayed busy."""
    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)):
            reply = await app.begin_reply()
            reply.segment_chars = 40
            app.feed("a first paragraph that is longer than forty characters\n\n")
            app.post_message(ShellApp.ReplyDone("done"))  # no flush ran before: this one splits, then stops
            deadline = time.monotonic() + 10
            while not app.last_reply and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert app.last_reply.get("status") == "done", "the reply never ended"
            assert len(reply.segments) == 2 and not app._busy
            assert reply.segments[0].text == "a first paragraph that is longer than forty characters"
    run(go())


def test_clearing_or_switching_chats_while_a_reply_streams_is_refused_and_the_reply_ends():
    """/clear, /new and /sessions NAME would remove the streaming reply's widgets (its text going
    nowhere, then stored in the other chat): refused while a reply streams, with what to do; the reply
    then ends normally and the shell takes the next message."""
    from llmos.shell.commands import Reply

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)):
            await app.begin_reply()
            app.feed("half a reply")
            for action in ("clear", "conversation"):
                app.post_message(ShellApp.CommandDone(Reply(action=action, arg=object())))
            deadline = time.monotonic() + 10
            while app.commands_done < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            errors = [m.text for m in app.chat_log.messages if m.role == "error"]
            assert len(errors) == 2 and all("esc cancels it" in e for e in errors), errors
            app.feed(", and the rest")
            app.post_message(ShellApp.ReplyDone("done"))
            while not app.last_reply and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert app.last_reply["text"] == "half a reply, and the rest" and not app.busy
            assert any(m.text == "half a reply, and the rest" for m in app.chat_log.messages)
    run(go())


def test_the_log_keeps_its_last_messages_and_says_how_many_left(monkeypatch):
    """Textual lays out every widget of the log on each layout, shown or not, so the log keeps the last
    KEEP_MESSAGES mounted: older ones leave it when a message is added, never a reply still streaming
    (its segments all stay, and its text is whole), the note at the top counts them (updated only when
    its count changes), a resumed session's
    unshown messages count too, and /clear starts over. (Waits use asyncio.sleep: Pilot.pause waits on
    every widget it saw, removed ones included.)"""
    from llmos.shell.widgets import chat_log
    from llmos.shell.widgets.chat_log import EarlierNote

    monkeypatch.setattr(chat_log, "KEEP_MESSAGES", 6)
    tokens = [f"word{i} " + ("\n\n" if i % 3 == 2 else "") for i in range(90)]

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 24)):
            log = app.chat_log
            for i in range(10):
                await log.add(f"message {i}", "user" if i % 2 == 0 else "assistant")
            assert [m.text for m in log.messages] == [f"message {i}" for i in range(4, 10)]
            [note] = log.query(EarlierNote)
            assert log.children[0] is note and "4 earlier messages not shown" in str(note.render())
            said, update = [], note.update
            note.update = lambda text: (said.append(text), update(text))[1]
            reply = await app.begin_reply()
            reply.segment_chars = 40  # a reply of several segments, more than the log keeps
            for tok in tokens:
                app.feed(tok)
                await asyncio.sleep(0.01)
            app.post_message(ShellApp.ReplyDone("done"))
            deadline = time.monotonic() + 10
            while not app.last_reply and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert app.last_reply["text"] == "".join(tokens)
            # while the reply streamed, the messages before it left; none of its segments did
            assert len(reply.segments) > 6 and log.messages == reply.segments and log.earlier == 10
            assert len(said) == len(set(said)) == 6  # the note changed only when messages left
            await log.add("next question", "user")  # the reply has ended: its first segments go now
            assert len(log.messages) == 6 and log.messages[-1].text == "next question"
            assert log.earlier == 10 + len(reply.segments) - 5 and f"{log.earlier} earlier messages" in str(note.render())
            await log.show([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], earlier=38)
            assert [m.text for m in log.messages] == ["q", "a"] and "38 earlier messages" in str(log.children[0].render())
            await log.clear()
            assert not log.query(EarlierNote) and log.earlier == 0
    run(go())


def test_a_streamed_reply_reuses_one_markdown_parser_and_renders_like_a_fresh_one():
    """Textual builds a new MarkdownIt (linkify patterns compiled again) for every append unless given a
    factory: the chat's messages parse on one parser per thread (appends on the UI thread, each mount's
    `update` in a worker thread), so a streamed reply builds none on the UI thread and at most one per
    worker, and what it shows (links, tables, code) equals a message given the whole text at once."""
    from markdown_it import MarkdownIt

    from llmos.shell.widgets.chat_message import shared_parser

    text = "See https://example.org and **bold** text.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```py\nx = 1\n```\n\nend"
    built = []
    original = MarkdownIt.__init__

    def counting(self, *args, **kwargs):
        built.append(threading.get_ident())
        original(self, *args, **kwargs)

    async def go():
        app = ShellApp(boot=False)
        async with app.run_test(size=(80, 30)) as pilot:
            shared_parser().parse("warm")  # the UI thread's parser exists before the reply starts
            MarkdownIt.__init__ = counting
            try:
                reply = await app.begin_reply()
                for i in range(0, len(text), 7):
                    app.feed(text[i:i + 7])
                    await pilot.pause(0.01)
                app.post_message(ShellApp.ReplyDone("done"))
                await until(pilot, lambda: app.last_reply, 10)
            finally:
                MarkdownIt.__init__ = original
            assert threading.get_ident() not in built and len(built) == len(set(built)), built
            whole = ChatMessage(text)
            await app.chat_log.mount(whole)
            await pilot.pause()
            streamed = reply.message
            shape = lambda m: [(type(b).__name__, str(getattr(b, "_content", "")) + getattr(b, "code", ""))  # noqa: E731
                               for b in m.query("MarkdownBlock")]
            assert shape(streamed) == shape(whole) and any(t == "MarkdownTable" for t, _ in shape(whole))
            assert "https://example.org" in "".join(c for _t, c in shape(streamed))
    run(go())


def test_the_paint_benchmark_times_tokens_to_frames_written_to_a_real_terminal():
    """B8a's harness (a child process on a pty): every token is painted after it was rendered, and a
    token's paint comes from a frame written to the terminal, not from the end of the render."""
    from llmos.benchmarks.shell_bench import _paint_delays

    painted, rendered = _paint_delays(90, 150.0)
    assert len(painted) == len(rendered) == 90
    assert all(0 < r <= p < 5000 for p, r in zip(painted, rendered)), list(zip(painted, rendered))[:5]

