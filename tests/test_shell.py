"""The Textual shell, driven headless with Textual's Pilot at 80x24 (the smallest supported size).

Unit tests (commands, completion, the prompt's keys) need no model; the rest share the session's
real SmolLM2 kernel and keep replies short."""

from __future__ import annotations

import asyncio
import html
import json
import re
import threading
import time
from types import SimpleNamespace

import pytest

from llmos.shell.app import ShellApp
from llmos.shell.commands import CommandSet, Context, is_command, md_table, split_line
from llmos.shell.completion import Completer
from llmos.shell.conversation import Conversation
from llmos.shell.widgets import ChatMessage, PromptInput

SHORT = {"max_tokens": 24}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def until(pilot, condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        await pilot.pause(0.05)


async def booted(app, pilot) -> None:
    await until(pilot, lambda: app.ready, 60, "the shell to boot")


async def command(app, pilot, line: str) -> ChatMessage | None:
    """Run a command line and return the message it answered with (info or error), if any."""
    before = app.commands_done
    await app.run_command(line)
    await until(pilot, lambda: app.commands_done > before, 30, f"an answer to {line}")
    messages = app.chat_log.messages
    return messages[-1] if messages else None


async def type_and_send(pilot, text: str) -> None:
    prompt = pilot.app.query_one(PromptInput)
    prompt.focus()
    prompt.insert(text)
    await pilot.press("enter")


def screen_text(app) -> str:
    """The screen as plain text lines, read back from Textual's SVG screenshot."""
    lines: dict[float, list[tuple[float, str]]] = {}
    for x, y, text in re.findall(r'<text[^>]*?x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', app.export_screenshot(),
                                 re.S):
        lines.setdefault(float(y), []).append((float(x), html.unescape(text).replace("\xa0", " ")))
    return "\n".join("".join(t for _x, t in sorted(parts)) for _y, parts in sorted(lines.items()))


class Proxy:
    """The real kernel with some attributes hidden or replaced (a kernel without sessions/spawn)."""

    def __init__(self, kernel, hide=(), **replace) -> None:
        self._kernel, self._hide, self._replace = kernel, set(hide), replace

    def __getattr__(self, name):
        if name in self._hide:
            raise AttributeError(name)
        if name in self._replace:
            return self._replace[name]
        return getattr(self._kernel, name)


# -- no model --------------------------------------------------------------------------------------

def test_command_line_parsing():
    assert is_command("/ps") and is_command(":ps") and not is_command("hello /ps") and not is_command("/")
    assert not is_command("//not a command")
    assert split_line("/Write /a.md some text") == ("write", "/a.md some text")
    table = md_table([{"a": "x|y", "b": 0.123456}], ["a", "b"])
    assert "x\\|y" in table and "0.123" in table and md_table([], ["a"], "none") == "none"


def test_completion_from_caches():
    kernel = SimpleNamespace(
        models=lambda: [SimpleNamespace(name="smollm2"), SimpleNamespace(name="gemma3-270m")],
        modules_info=lambda: [{"name": "pirate"}], tools=SimpleNamespace(all=lambda: {"calculator": 1}, tasks={},
                                                                        commands={}),
        mem=SimpleNamespace(ls=lambda d: [{"path": "/notes", "type": "dir"}, {"path": "/todo.md", "type": "file"}]))
    completer = Completer(CommandSet(kernel))
    asked = []
    completer.wanted_dir = asked.append
    assert completer.suggest("/mo") == "/model "
    assert completer.suggest("/he") == "/help "
    assert completer.suggest("hello") is None and completer.suggest("/nosuch x") is None
    completer.refresh(kernel)
    assert completer.suggest("/model sm") == "/model smollm2"
    assert completer.suggest("/model ge") == "/model gemma3-270m"
    assert completer.suggest("/insmod p") == "/insmod pirate"
    assert completer.suggest("/ls /no") is None and asked == ["/"]  # fetched in the background first
    completer.fetch_dir(kernel, "/")
    assert completer.suggest("/ls /no") == "/ls /notes/"
    assert completer.suggest("/cat /to") == "/cat /todo.md"


def test_prompt_keys_history_and_newline():
    async def go():
        app = ShellApp(boot=False)
        seen: dict = {}  # a message is seen once per node it bubbles through; kept alive, ids stay unique
        async with app.run_test(size=(80, 24),
                                message_hook=lambda m: seen.setdefault(id(m), m)
                                if isinstance(m, PromptInput.Submitted) else None) as pilot:
            prompt = app.query_one(PromptInput)
            assert prompt.has_focus
            await pilot.press("h", "i", "ctrl+j", "y", "o", "enter")
            await pilot.press(*"second", "enter")
            await until(pilot, lambda: len(seen) == 2)
            assert [m.text for m in seen.values()] == ["hi\nyo", "second"] and prompt.text == ""
            await pilot.press("up")
            assert prompt.text == "second"
            await pilot.press("up")
            assert prompt.text == "hi\nyo"
            await pilot.press("down", "down")
            assert prompt.text == ""
            await pilot.press("/", "t", "o")
            assert prompt.suggestion == ""  # no kernel yet: nothing to complete from
            # chat before the kernel is there is an inline error, not a crash
            await until(pilot, lambda: any(m.role == "error" for m in app.chat_log.messages))
    run(go())


# -- real kernel -----------------------------------------------------------------------------------

@pytest.mark.model
def test_layout_at_80x24_and_larger(kernel):
    async def go(size):
        app = ShellApp(kernel, resume=False)
        async with app.run_test(size=size) as pilot:
            await booted(app, pilot)
            w, h = size
            header, chat = app.query_one("Header").region, app.query_one("#chat").region
            prompt, footer = app.query_one("#prompt").region, app.query_one("Footer").region
            assert header.y == 0 and footer.y == h - 1 and footer.width == w
            assert chat.y == 1 and chat.height >= h - 8 and prompt.bottom <= footer.y
            assert "smollm2" in app.sub_title and "new chat" in app.sub_title
            await until(pilot, lambda: "esc Cancel" in screen_text(app), 5, "the footer")
            text = screen_text(app)
            assert "llmos" in text and "esc Cancel" in text and "f2 Top" in text and "ready" in text, text
            return chat.height
    assert run(go((120, 40))) > run(go((80, 24)))


@pytest.mark.model
def test_chat_streams_a_reply_and_records_the_turn(kernel):
    async def go():
        app = ShellApp(kernel, resume=False, sampling={"max_tokens": 48, "temperature": 0})  # greedy: "Paris"
        wakeups: dict = {}  # Token messages (kept alive so their ids stay unique)
        async with app.run_test(size=(80, 24), message_hook=lambda m: wakeups.setdefault(id(m), m)
                                if isinstance(m, ShellApp.Token) else None) as pilot:
            await booted(app, pilot)
            await type_and_send(pilot, "What is the capital of France?")
            await until(pilot, lambda: app.last_reply, 60, "the reply")
            assert app.last_reply["status"] == "done", app.last_reply
            reply = [m for m in app.chat_log.messages if m.role == "assistant"][-1]
            assert reply.text.strip() and reply.text == app.last_reply["text"]
            assert len(wakeups) >= 2  # the text arrived piece by piece, not in one go
            assert "Paris" in reply.text
            assert [m["role"] for m in app.conv.messages] == ["user", "assistant"]
            assert app.conv.messages[-1]["content"] == reply.text
            assert "tok/s" in str(app.status.state)
    run(go())


@pytest.mark.model
def test_escape_cancels_mid_reply_while_input_stays_usable(kernel):
    async def go():
        app = ShellApp(kernel, resume=False, sampling={"max_tokens": 400, "ignore_eos": True})
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            await type_and_send(pilot, "Write a long story about a dragon.")
            await until(pilot, lambda: app.handle is not None and app.reply is not None and len(app.reply.text) > 20,
                        60, "some streamed text")
            rid = app.handle.id
            ps = await command(app, pilot, "/ps")  # commands work while the reply streams
            assert rid in ps.text and "running" in ps.text
            await pilot.press("escape")
            await until(pilot, lambda: app.last_reply, 30, "the cancellation")
            assert app.last_reply["status"] == "cancelled" and app.last_reply["id"] == rid
            assert rid not in {r["id"] for r in kernel.ps()}
            assert "[cancelled]" in app.chat_log.messages[-1].text or "cancelled" in str(app.status.state)
            last = app.conv.messages[-1]  # the partial answer is kept in the conversation
            assert last["role"] == "assistant" and last["content"] == app.last_reply["text"] != ""
    run(go())


COMMANDS = [  # line, text expected in the answer, is an error
    ("/help", "/model NAME", False),
    (":help model", "chat with another model", False),
    ("/bogus", "unknown command /bogus", True),
    ("/model", "model: **smollm2**", False),
    ("/model nope", "unknown model 'nope'", True),
    ("/model smollm2", "model set to **smollm2**", False),
    ("/adapter nope", "no installed module 'nope'", True),
    ("/adapter none", "adapter cleared", False),
    ("/adapter", "missing argument", True),
    ("/system Answer in one word.", "system prompt set", False),
    ("/system none", "system prompt cleared", False),
    ("/ps", "", False),
    ("/kill", "missing argument", True),
    ("/kill req-nope", "no live request", True),
    ("/lsmod", lambda k: "| name |" if k.lsmod() else "no modules loaded", False),
    ("/insmod nope", "nope", True),
    ("/rmmod nope", "nope", True),
    ("/tools", "calculator", False),
    ('/call calculator {"expression": "6*7"}', "42", False),
    ("/call calculator {oops", "not valid JSON", True),
    ('/call nosuchtool {}', "unknown tool", True),
    ("/task nope", "unknown task", True),
    ("/plugins", "llmos.builtin", False),
    ("/cat", "missing argument", True),
    ("/write", "missing argument", True),
    ("/rag off", "no longer use memfs", False),
    ("/priority wizard", "priority must be one of", True),
    ("/priority batch", "priority **batch**", False),
    ("/priority", "priority: **batch**", False),
    ("/priority default", "tenant's class", False),
    ("/sessions no-such-session", "no session 'no-such-session'", True),
]


@pytest.mark.model
def test_every_command_answers_inline(kernel):
    async def go():
        app = ShellApp(kernel, resume=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            for line, expected, is_error in COMMANDS:
                answer = await command(app, pilot, line)
                expected = expected(kernel) if callable(expected) else expected  # noqa: PLW2901
                assert answer.role == ("error" if is_error else "info"), (line, answer.text)
                assert expected in answer.text, (line, answer.text)
            assert app.conv.model == "smollm2" and app.conv.system is None
            assert "priority" not in app.sampling  # /priority default took it back
            await command(app, pilot, "/write")
            assert app.is_running  # nothing crashed the app
            assert await command(app, pilot, "/clear") is None and not app.chat_log.messages
    run(go())


@pytest.mark.model
def test_sessions_resume_new_and_switch(kernel):
    if not hasattr(kernel, "sessions"):
        pytest.skip("this kernel has no sessions service")
    old = kernel.sessions.open(None)
    old.append({"role": "user", "content": "remember the word heliotrope"})
    old.append({"role": "assistant", "content": "Heliotrope, noted."})

    async def go():
        app = ShellApp(kernel)  # resumes the last chat session
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            assert app.conv.session.id == old.id
            assert [m.text for m in app.chat_log.messages] == ["remember the word heliotrope", "Heliotrope, noted."]
            await command(app, pilot, "/new")
            await until(pilot, lambda: app.conv.session.id != old.id)
            assert not app.conv.messages and "new chat" in app.sub_title
            listing = await command(app, pilot, "/sessions")
            assert "remember the word" in listing.text
            await command(app, pilot, f"/sessions {old.id}")
            await until(pilot, lambda: app.conv.session.id == old.id)
            await until(pilot, lambda: any("heliotrope" in m.text for m in app.chat_log.messages))
    run(go())


class FakeProcess:
    """An agent process that emits a scripted run, or runs until killed."""

    def __init__(self, events, hang: bool = False) -> None:
        self.pid, self.state, self.model, self.answer = "agent-fake", "thinking", "smollm2", None
        self._events, self._hang, self.killed = events, hang, threading.Event()

    def events(self, timeout=None):
        yield from self._events
        if self._hang:
            self.state = "killed" if self.killed.wait(30) else "finished"

    def kill(self):
        self.killed.set()


def test_agent_events_render_and_escape_kills(fake_kernel):
    """The shell's side of agents (scripted processes on a kernel with a fake driver: no model)."""
    ev = lambda kind, text="", step=1, **data: SimpleNamespace(kind=kind, text=text, step=step, data=data)  # noqa: E731
    script = [ev("step"), ev("token", '{"tool": "calculator"}'), ev("tool_call", "calculator", name="calculator",
                                                                       arguments={"expression": "2+2"}),
              ev("tool_result", "4"), ev("answer", "The answer is 4.", step=2)]
    spawned, processes = [], []

    def spawn(goal, **kw):
        spawned.append((goal, kw))
        processes.append(FakeProcess(script, hang=len(spawned) > 1))
        return processes[-1]

    async def go():
        app = ShellApp(Proxy(fake_kernel, spawn=spawn), resume=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            await app.run_command("/agent add two and two")
            await until(pilot, lambda: app.agent is None and any(m.text == "The answer is 4."
                                                                  for m in app.chat_log.messages), 10)
            texts = [m.text for m in app.chat_log.messages]
            assert any("calculator" in t and "2+2" in t for t in texts) and "<- 4" in texts
            assert spawned[0][0] == "add two and two" and spawned[0][1]["owner"] == "shell"
            assert callable(spawned[0][1]["approve"])
            await app.run_command("/agent run forever")
            await until(pilot, lambda: app.agent is not None, 10)
            await pilot.press("escape")
            await until(pilot, lambda: app.agent is None, 10, "the agent to stop")
            assert processes[1].killed.is_set() and "killed" in str(app.status.state)
    run(go())


@pytest.mark.model
def test_without_sessions_or_agents_the_shell_still_chats(kernel):
    async def go():
        app = ShellApp(Proxy(kernel, hide=("sessions", "spawn")), sampling=SHORT)
        async with app.run_test(size=(80, 24)) as pilot:
            await booted(app, pilot)
            assert not app.conv.persistent and app.conv.title == "unsaved"
            for line, expected in [("/sessions", "sessions are not available"),
                                   ("/agent do something", "agents are not available")]:
                answer = await command(app, pilot, line)
                assert answer.role == "error" and expected in answer.text
            await type_and_send(pilot, "Say hello.")
            await until(pilot, lambda: app.last_reply, 60)
            assert app.last_reply["status"] == "done" and len(app.conv.messages) == 2
            await command(app, pilot, "/new")
            await until(pilot, lambda: not app.conv.messages)
    run(go())


def test_conversation_keeps_settings_without_sessions():
    conv = Conversation(SimpleNamespace(config=SimpleNamespace(default_model="smollm2")))
    assert conv.model == "smollm2" and conv.title == "unsaved"
    conv.update(system="Be brief.", model="gemma3-270m")
    for i in range(30):
        conv.append("user" if i % 2 == 0 else "assistant", f"m{i}")
    msgs = conv.request_messages()
    assert msgs[0] == {"role": "system", "content": "Be brief."} and len(msgs) == 21 and msgs[-1]["content"] == "m29"
    fresh = conv.fresh()
    assert fresh.model == "gemma3-270m" and fresh.system == "Be brief." and not fresh.messages
    assert json.dumps(conv.messages)  # plain dicts
    ctx = Context(conv.kernel, conv)
    assert CommandSet(conv.kernel).run(ctx, "/sessions").error
