"""Agent processes and the session store with a scripted driver: the loop's logic, no model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

import llmos
from llmos.kernel.proc.agents import ProcessState
from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.proc.sessions import SessionStore, UnknownSessionError
from llmos.plugins.hookspecs import hookimpl
from llmos.plugins.manager import PluginManager

from .fakes import ScriptedDriver
from .util import wait_for

RELEASE = threading.Event()
STARTED = threading.Event()


class AgentTestPlugin:
    @hookimpl
    def register_drivers(self, register):
        register(ScriptedDriver)

    @hookimpl
    def register_tools(self, register):
        def add(a: int, b: int) -> int:
            """Add two integers."""
            return a + b

        def wait_forever() -> str:
            """Block until the test releases it."""
            STARTED.set()
            RELEASE.wait(30)
            return "released"

        def send_mail(to: str) -> str:
            """Send an email (needs a capability nobody granted)."""
            return "sent"

        register(add)
        register(wait_forever)
        register(send_mail, capabilities=["net"])


def boot(home, **overrides):
    pm = PluginManager(load_entrypoints=False)
    pm.register(AgentTestPlugin(), name="agent-test")
    model = home / "fake.gguf"
    home.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"GGUF" + b"\0" * 64)
    return llmos.boot(home=home, plugins=pm, default_model=str(model), **overrides)


@pytest.fixture
def kernel(tmp_path):
    ScriptedDriver.prompts, ScriptedDriver.schemas, ScriptedDriver.delay = [], [], 0.0
    RELEASE.clear()
    STARTED.clear()
    k = boot(tmp_path / "home")
    yield k
    RELEASE.set()
    k.shutdown()


def script(*replies):
    """Replies in order, whatever the prompt."""
    queue = list(replies)
    ScriptedDriver.reply = staticmethod(lambda _prompt: queue.pop(0) if queue else '{"name": "answer"}')


def call(name, **args):
    """The two replies of one tool call: the choice, then the arguments."""
    return json.dumps({"name": name}), json.dumps(args)


def answer(text):
    return '{"name": "answer"}', text


def by_stage(choice, arguments, final):
    """A reply function that answers each of the three kinds of agent prompt."""
    def reply(prompt):
        if "Write the arguments" in prompt:
            return arguments(prompt)
        if "Answer the user's goal" in prompt:
            return final(prompt)
        return choice(prompt)
    return staticmethod(reply)


def test_a_call_a_result_an_answer(kernel):
    script(*call("add", a=2, b=3), *answer("2 + 3 = 5"))
    proc = kernel.spawn("What is 2 + 3?", tools=["add"])
    assert proc.wait(10) and proc.state == ProcessState.FINISHED and proc.answer == "2 + 3 = 5"
    kinds = [e.kind for e in proc.events() if e.kind != "token"]
    assert kinds == ["step", "tool_call", "tool_result", "step", "answer"]
    result = next(e for e in proc.events() if e.kind == "tool_result")
    assert result.text == "5" and 'add({"a": 2, "b": 3}) returned: 5' in ScriptedDriver.prompts[2]
    assert "".join(e.text for e in proc.events() if e.kind == "token" and e.step == 1) == "".join(call("add", a=2, b=3))
    # the choice, then the arguments, each constrained; the first step must call a tool
    assert ScriptedDriver.schemas[0]["properties"]["name"] == {"enum": ["add"]}
    assert ScriptedDriver.schemas[1]["properties"].keys() == {"a", "b"}
    assert ScriptedDriver.schemas[2]["properties"]["name"] == {"enum": ["add", "answer"]}
    assert ScriptedDriver.schemas[3] is None  # the answer is free text
    assert "- add: Add two integers." in ScriptedDriver.prompts[0]
    stored = kernel.sessions.get(proc.session_id)
    assert stored.kind == "agent" and stored.state == "finished" and stored.title == "What is 2 + 3?"
    assert [m["role"] for m in stored.messages] == ["user", "assistant", "tool", "assistant"]
    assert stored.messages[1]["tool_calls"][0]["function"]["name"] == "add"
    assert stored.messages[2]["tool_call_id"] == stored.messages[1]["tool_calls"][0]["id"]


def test_invalid_calls_are_shown_back_and_retried(kernel):
    script("not json", '{"name": "nope"}', *call("add", a="x", b=1), *call("add", a=1, b=1), *answer("2"))
    proc = kernel.spawn("Add one and one.", tools=["add"], max_steps=6)
    assert proc.wait(10) and proc.answer == "2", proc.error
    errors = [e.text for e in proc.events() if e.kind == "error"]
    assert len(errors) == 3
    assert "not valid JSON" in errors[0] and "no tool 'nope'" in errors[1] and "at a" in errors[2]
    assert "That reply was invalid" in ScriptedDriver.prompts[1] and "no tool 'nope'" in ScriptedDriver.prompts[2]


def test_step_and_token_budgets(kernel):
    ScriptedDriver.reply = by_stage(lambda _p: '{"name": "add"}', lambda p: json.dumps({"a": len(p), "b": 2}),
                                    lambda _p: "")
    proc = kernel.spawn("Loop forever.", tools=["add"], max_steps=3)
    assert proc.wait(10) and proc.state == ProcessState.OUT_OF_BUDGET and proc.step == 3
    assert "step budget of 3" in proc.error
    proc = kernel.spawn("Loop forever.", tools=["add"], max_steps=50, max_tokens=80)
    assert proc.wait(10) and proc.state == ProcessState.OUT_OF_BUDGET and "token budget" in proc.error
    assert 80 <= proc.tokens < 80 + 40


def test_kill_mid_tool_and_mid_generation(kernel):
    script(*call("wait_forever"))
    proc = kernel.spawn("Wait.", tools=["wait_forever"], owner="bob", priority="high")
    assert STARTED.wait(10)
    row = next(r for r in kernel.ps() if r["id"] == proc.pid)
    assert row["state"] == "waiting_tool" and row["owner"] == "bob" and row["kind"] == "agent"
    assert kernel.cancel(proc.pid)
    assert proc.wait(5) and proc.state == ProcessState.KILLED
    assert kernel.sessions.get(proc.session_id).state == "killed"
    assert not [r for r in kernel.ps() if r["id"] == proc.pid]
    # mid-generation: a reply that never ends; kill frees the request's slot
    ScriptedDriver.reply = staticmethod(lambda _p: "x" * 10_000)
    ScriptedDriver.delay = 0.02
    proc = kernel.spawn("Talk.", tools=["add"])
    wait_for(lambda: any(r.get("kind") != "agent" and r["state"] == "running" for r in kernel.ps()), timeout=10)
    assert next(r for r in kernel.ps() if r.get("kind") != "agent")["priority"] == "normal"
    proc.kill()
    assert proc.wait(5) and proc.state == ProcessState.KILLED
    wait_for(lambda: kernel.ps() == [], msg=kernel.ps)


def test_denied_tool_is_reported_to_the_model_and_audited(kernel):
    script(*call("send_mail", to="x@example.com"), *answer("I could not send it."))
    proc = kernel.spawn("Mail x.", tools=["send_mail"])
    assert proc.wait(10) and proc.state == ProcessState.FINISHED
    result = next(e for e in proc.events() if e.kind == "tool_result")
    assert "needs capability net" in result.text
    assert kernel.tools.audit.read()[-1]["decision"] == "denied"
    approved = kernel.spawn("Mail x.", tools=["send_mail"], approve=lambda tool, caps: "once")
    script(*call("send_mail", to="x@example.com"), *answer("sent"))
    assert approved.wait(10) and '"sent"' in next(e.text for e in approved.events() if e.kind == "tool_result")


def test_many_agents_share_the_kernel(kernel):
    ScriptedDriver.reply = by_stage(lambda p: '{"name": "answer"}' if "returned:" in p else '{"name": "add"}',
                                    lambda p: json.dumps({"a": len(p) % 7, "b": 1}), lambda _p: "ok")
    procs = [kernel.spawn(f"Task {i}.", tools=["add"], owner=f"user{i}") for i in range(6)]
    assert all(p.wait(20) for p in procs)
    assert all(p.state == ProcessState.FINISHED and p.step == 2 for p in procs)
    assert len(kernel.sessions.list(kind="agent")) == 6


def test_spawn_rejects_bad_input_before_storing_anything(kernel):
    for kwargs, param in [({"tools": ["nope"]}, "tools"), ({"max_steps": 0}, "max_steps"),
                          ({"priority": "urgent"}, "priority"), ({"max_tokens": "many"}, "max_tokens")]:
        with pytest.raises(InvalidRequestError) as info:
            kernel.spawn("Goal.", **kwargs)
        assert info.value.param == param
    with pytest.raises(InvalidRequestError):
        kernel.spawn("   ")
    with pytest.raises(UnknownSessionError):
        kernel.spawn(session="no-such-session")
    assert kernel.sessions.list() == []


def test_sessions_persist_resume_and_export(tmp_path):
    home = tmp_path / "home"
    k = boot(home)
    script(*call("add", a=20, b=22), *answer("42"))
    proc = k.spawn("What is 20 + 22?", tools=["add"])
    assert proc.wait(10)
    chat = k.sessions.open("notes", model="m1")
    chat.append({"role": "user", "content": "Remember the number 7."})
    chat.append({"role": "assistant", "content": "Noted."})
    k.shutdown()
    # a kernel process that dies while an agent runs: the next kernel marks the session crashed
    code = (f"import sys; sys.path[:0] = {sys.path!r}\n"
            "from llmos.kernel.proc.sessions import SessionStore\nfrom pathlib import Path\n"
            f"s = SessionStore(Path({str(home / 'sessions.db')!r}))\n"
            "x = s.create(kind='agent', title='doomed', state='running')\nprint(x.id)\n"
            "import os; os._exit(0)")
    doomed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    k2 = boot(home)
    try:
        assert k2.sessions.get(doomed).state == "crashed"
        again = k2.sessions.open("notes")
        assert [m["content"] for m in again.messages] == ["Remember the number 7.", "Noted."] and again.model == "m1"
        assert k2.sessions.last()["name"] == "notes"
        md = k2.sessions.export(proc.session_id, "md")
        assert "# What is 20 + 22?" in md and "assistant → add" in md and "42" in md
        assert json.loads(k2.sessions.export(proc.session_id, "json"))["messages"][-1]["content"] == "42"
        # an agent session resumes with its history as context
        script(*answer("Still 42."))
        resumed = k2.spawn("And again?", session=proc.session_id, tools=["add"])
        assert resumed.wait(10) and resumed.answer == "Still 42."
        assert "What is 20 + 22?" in ScriptedDriver.prompts[-1] and "returned: 42" in ScriptedDriver.prompts[-1]
        k2.sessions.delete("notes")
        with pytest.raises(UnknownSessionError):
            k2.sessions.get("notes")
    finally:
        k2.shutdown()


def test_session_store_refuses_bad_messages(tmp_path):
    store = SessionStore(tmp_path / "s.db")
    s = store.create(name="a")
    with pytest.raises(InvalidRequestError):
        s.append({"role": "wizard", "content": "x"})
    with pytest.raises(InvalidRequestError):
        s.append({"role": "user", "content": 3})
    with pytest.raises(InvalidRequestError):
        store.create(name="a")
    with pytest.raises(InvalidRequestError):
        s.update(colour="red")
    assert s.messages == []


PLANTED = ("Mail jane.doe@example.com or call +1 415-555-0134; card 4111 1111 1111 1111; "
           "ticket ACME-123456.")


def test_redaction_masks_prompts_sessions_and_audit(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmos.toml").write_text('[redaction]\nenabled = true\npatterns = ["ACME-\\\\d{6}"]\n')
    k = boot(home)
    ScriptedDriver.prompts = []
    try:
        script(*call("add", a=1, b=2), *answer("Reach jane.doe@example.com."))
        proc = k.spawn(PLANTED, tools=["add"])
        assert proc.wait(10) and proc.state == ProcessState.FINISHED
        k.chat([{"role": "user", "content": PLANTED}], max_tokens=2)
        k.call_tool("add", {"a": 1, "b": 2}, owner="4111-1111-1111-1111")
        planted = ["jane.doe@example.com", "415-555-0134", "4111 1111 1111 1111", "4111-1111-1111-1111", "ACME-123456"]
        stored = json.dumps(k.sessions.get(proc.session_id).as_dict()) + k.sessions.export(proc.session_id)
        audit = (home / "audit.jsonl").read_text()
        for where in (*ScriptedDriver.prompts, stored, audit):
            assert not [p for p in planted if p in where], where
        assert all(m in ScriptedDriver.prompts[0] for m in ("[EMAIL]", "[PHONE]", "[CARD]", "[REDACTED]"))
        assert "[EMAIL]" in stored and "[CARD]" in audit
        assert [json.loads(line) for line in audit.splitlines()]  # still valid JSON lines
    finally:
        k.shutdown()


def test_redaction_is_off_by_default_and_leaves_numbers_alone(kernel):
    from llmos.plugins.redaction import Redaction

    kernel.chat([{"role": "user", "content": PLANTED}], max_tokens=2)
    assert "jane.doe@example.com" in ScriptedDriver.prompts[-1]
    r = Redaction()
    r.configure({"enabled": True})
    assert r.mask("Order 12345 costs 19.99 in 2024; card 4111 1111 1111 1112.") == \
        "Order 12345 costs 19.99 in 2024; card 4111 1111 1111 1112."


class SecretRedactor:
    @hookimpl
    def register_redactors(self, register):
        register("secret", lambda text: text.replace("hunter2", "[SECRET]"))


def test_a_plugin_redactor_masks_what_the_kernel_stores(tmp_path):
    k = boot(tmp_path / "home")
    k.plugins.register(SecretRedactor(), name="secret")
    try:
        assert k.redact("my password is hunter2") == "my password is [SECRET]"
        s = k.sessions.open("x")
        s.append({"role": "user", "content": "hunter2 is my password"})
        assert s.messages[0]["content"] == "[SECRET] is my password"
        assert k.sessions.get("x").title == "[SECRET] is my password"
    finally:
        k.shutdown()
