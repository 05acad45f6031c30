"""What a client without trust (no key, not the Unix socket's owner) may not do over HTTP, and what only
an agent's spawner may: each rule tried as a hostile client against a real `llmos serve` on loopback.

Trust (shell/server/security.py): the owner (the daemon's Unix socket) or an API key holder. Without it:
no priority above normal, no named driver, no model path (not even one stored in a session), no agent
that asks approvals. With it, an agent's approvals are answered only with the token its spawn returned,
and a non-detached agent ends when its spawner's event stream does.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from llmos.kernel.proc.sessions import SessionStore
from llmos.shell.server.sse import KEEPALIVE_S

from .test_server_hardening import refused, served
from .util import wait_for

pytestmark = [pytest.mark.cli, pytest.mark.model]

KEY = "trust-key-456"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = [{"role": "user", "content": "Say hi."}]
CHAT = {"model": "smollm2", "messages": ASK}
WRITE = {"goal": "Write the word hello to the file /approved/x.txt.", "tools": ["mem_write"], "max_steps": 2,
         "max_tokens": 256}


@pytest.fixture(scope="module")
def keyless(tmp_path_factory):
    where = tmp_path_factory.mktemp("keyless")
    with served(where) as (_proc, base):
        yield base, where / "home"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    with served(tmp_path_factory.mktemp("keyed"), "--api-key", KEY) as (_proc, base):
        yield base


def _first_event(lines, kind: str | None = None) -> dict:
    """The next event (of `kind`) from an SSE stream's `lines` iterator."""
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            event = json.loads(line[len("data: "):])
            if kind is None or event.get("kind") == kind:
                return event
    raise AssertionError(f"the stream ended without a {kind or 'first'} event")


def test_without_trust_no_priority_above_normal_and_no_driver(keyless):
    base, _ = keyless
    chat = f"{base}/v1/chat/completions"
    for priority in ("realtime", "high", 0, 1):
        refused(httpx.post(chat, json={**CHAT, "priority": priority}, timeout=60), 403, param="priority")
        refused(httpx.post(f"{base}/llmos/agents", json={"goal": "x", "priority": priority}, timeout=60), 403,
                param="priority")
    refused(httpx.post(chat, json={**CHAT, "driver": "torch"}, timeout=60), 403, "admin_only", "driver")
    assert httpx.post(chat, json={**CHAT, "priority": "batch", "max_tokens": 4}, timeout=60).status_code == 200


def test_without_trust_a_session_never_carries_a_model_path(keyless):
    base, home = keyless
    refused(httpx.post(f"{base}/llmos/sessions", json={"model": "/etc/passwd"}), 404, "model_not_found")
    made = httpx.post(f"{base}/llmos/sessions", json={"name": "mine"}).json()
    refused(httpx.patch(f"{base}/llmos/sessions/{made['id']}", json={"model": "/etc/passwd"}), 404, "model_not_found")
    # a session that holds a path (the owner set it in-process) lends it to no HTTP agent
    store = SessionStore(home / "sessions.db")
    planted = store.create(kind="agent", model="/nonexistent/weights.gguf", owner="anonymous")
    store.close()
    refused(httpx.post(f"{base}/llmos/agents", json={"goal": "x", "session": planted.id}, timeout=60), 404,
            "model_not_found")


def test_without_trust_no_agent_asks_approvals(keyless):
    base, _ = keyless
    refused(httpx.post(f"{base}/llmos/agents", json={**WRITE, "approvals": True}), 403, "approvals_need_trust")


def test_a_session_message_is_typed(keyless):
    base, _ = keyless
    sid = httpx.post(f"{base}/llmos/sessions", json={}).json()["id"]
    url = f"{base}/llmos/sessions/{sid}/messages"
    for bad in ({"role": "wizard", "content": "x"}, {"role": "tool", "tool_call_id": {"a": 1}},
                {"role": "assistant", "tool_calls": "x"}, {"role": "user", "content": ["x"]}):
        r = httpx.post(url, json=bad)
        assert r.status_code == 400 and r.json()["error"]["message"], (bad, r.text)
    assert httpx.post(url, json={"role": "user", "content": "kept", "extra": 1}).status_code == 200
    assert httpx.get(f"{base}/llmos/sessions/{sid}").json()["messages"] == [{"role": "user", "content": "kept"}]


def test_only_the_spawner_answers_an_agents_approvals(keyed):
    spawned = httpx.post(f"{keyed}/llmos/agents", headers=AUTH, json={**WRITE, "approvals": True}, timeout=60).json()
    pid, token = spawned["pid"], spawned["token"]
    other = httpx.post(f"{keyed}/llmos/agents", headers=AUTH, json={"goal": "Say hi.", "tools": [], "max_steps": 1,
                                                                    "max_tokens": 16, "detach": True}, timeout=60).json()
    approve = f"{keyed}/llmos/agents/{pid}/approve"
    with httpx.stream("GET", f"{keyed}/llmos/agents/{pid}/events", headers=AUTH, params={"token": token},
                      timeout=120) as response:
        events = response.iter_lines()
        question = _first_event(events, "approval")
        # the agent now waits on its spawner in silence: the stream says it is alive (an SSE comment)
        waited = time.monotonic()
        assert next(line for line in events if line.startswith(":")) == ": keepalive"
        assert time.monotonic() - waited >= KEEPALIVE_S - 1
        for guess in ("", "guess", other["token"]):
            refused(httpx.post(approve, headers=AUTH, json={"id": question["id"], "answer": "always", "token": guess}),
                    403, "approvals_need_trust", "token")
        assert httpx.post(approve, headers=AUTH, json={"id": question["id"], "answer": "deny", "token": token}
                          ).status_code == 200
        refused(httpx.post(approve, headers=AUTH, json={"id": question["id"], "answer": "once", "token": token}),
                400, param="id")  # answered already
        result = _first_event(events, "tool_result")
        assert "memfs.write" in result["text"]  # denied: the capability was not granted


def test_a_non_detached_agent_ends_with_its_spawners_stream_and_only_that_one(keyed):
    story = {"goal": "Count from 1 to 2000, one number per line.", "tools": [], "max_steps": 1, "max_tokens": 8192}
    spawned = httpx.post(f"{keyed}/llmos/agents", headers=AUTH, json=story, timeout=60).json()
    pid, token = spawned["pid"], spawned["token"]
    row = f"{keyed}/llmos/agents/{pid}"
    with httpx.stream("GET", f"{row}/events", headers=AUTH, timeout=120) as watcher:  # a watcher: no token
        _first_event(watcher.iter_lines(), "token")
    with httpx.stream("GET", f"{row}/events", headers=AUTH, params={"token": token}, timeout=120) as spawner:
        lines = spawner.iter_lines()  # (dropping the iterator would close the connection)
        _first_event(lines, "token")
        assert httpx.get(row, headers=AUTH).json()["state"] == "thinking"  # the watcher left: it runs on
    wait_for(lambda: httpx.get(row, headers=AUTH).json()["state"] == "killed", 30)
