"""Issue 14, storage: redaction masks the strings of a structure before it is serialized (audit log,
session store) and RAG passages too; unknown llmos.toml keys stop the boot; the audit log and the
session store are pruned by their retention settings."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Optional

import pytest

import llmos
from llmos.kernel.errors import ConfigError
from llmos.plugins.hookspecs import hookimpl
from llmos.plugins.manager import PluginManager

from .fakes import ScriptedDriver
from .test_agents import answer, call, script
from .util import run_llmos

REDACTION_ON = "[redaction]\nenabled = true\n"
#: PII that the old maskers, run over JSON text, lost an entry on or missed: a non-ASCII email
#: (escaped as jos\u00e9, the masked line was no longer JSON) and PII right after a \n or \t escape
TRICKY = {"to": "josé@x.com", "body": "Call me:\n+1 415-555-0134\tor\tjane.doe@example.com"}
PLANTED = ["josé", "jos\\u00e9", "@x.com", "415-555-0134", "555-0134", "jane.doe@example.com", "4111 1111"]


#: what a tool hands back to an agent: a card after a \t and a phone after a \n, escaped in the JSON
#: the model reads (`Tool lookup({}) returned: "Card:\t4111..."`)
LOOKUP = "Card:\t4111 1111 1111 1111\nCall 415-555-0134"


class NotesPlugin:
    """Tools taking and returning free text, a scripted model, and a plugin that owns a table."""

    @hookimpl
    def register_drivers(self, register):
        register(ScriptedDriver)

    @hookimpl
    def register_tools(self, register):
        def note(to: str, body: str, extra: Optional[dict] = None) -> str:
            """Send a note."""
            return "sent"

        def lookup() -> str:
            """Look up the customer."""
            return LOOKUP

        register(note)
        register(lookup)

    @hookimpl
    def register_config(self, register):
        register("weather", ["unit", "cities"])


def boot(home, toml: str = "", **overrides):
    home.mkdir(parents=True, exist_ok=True)
    (home / "llmos.toml").write_text(toml)
    pm = PluginManager(load_entrypoints=False)
    pm.register(NotesPlugin(), name="notes")
    return llmos.boot(home=home, plugins=pm, **overrides)


def leaks(text: str) -> list[str]:
    return [p for p in PLANTED if p in text]


# -- redaction: strings first, then JSON ----------------------------------------------------------

def test_the_audit_log_masks_string_values_then_serializes(tmp_path):
    with boot(tmp_path / "home", REDACTION_ON) as k:
        assert k.call_tool("note", {**TRICKY, "extra": {"cc josé@x.com": ["415-555-0134"]}}, owner="josé@x.com").ok
        lines = (k.config.home / "audit.jsonl").read_text(encoding="utf-8").splitlines()
        rows = k.tools.audit.read()
    assert len(lines) == len(rows) == 1  # stored, and valid JSON (the entry used to vanish)
    assert not leaks(lines[0]), lines[0]
    args = rows[0]["args"]
    assert args["to"] == "[EMAIL]" and args["body"] == "Call me:\n[PHONE]\tor\t[EMAIL]" and rows[0]["who"] == "[EMAIL]"
    assert args["extra"] == {"cc [EMAIL]": ["[PHONE]"]}  # keys are masked too


def test_the_session_store_masks_string_values_then_serializes(tmp_path):
    with boot(tmp_path / "home", REDACTION_ON) as k:
        s = k.sessions.create(kind="agent", system="Reply to josé@x.com.")
        arguments = json.dumps(TRICKY)  # as an agent stores a call: JSON text, non-ASCII escaped
        s.append({"role": "user", "content": TRICKY["body"]})
        s.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "note", "arguments": arguments}}]})
        s.append({"role": "tool", "tool_call_id": "call_1", "content": json.dumps(TRICKY["body"])})
        stored = k.sessions.get(s.id)
        messages, exported = stored.messages, k.sessions.export(s.id, "json")
    assert not leaks(exported + stored.title + stored.system), exported
    assert messages[0]["content"] == "Call me:\n[PHONE]\tor\t[EMAIL]" and stored.system == "Reply to [EMAIL]."
    call = messages[1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"to": "[EMAIL]", "body": "Call me:\n[PHONE]\tor\t[EMAIL]"}
    assert json.loads(messages[2]["content"]) == "Call me:\n[PHONE]\tor\t[EMAIL]"


def test_a_tool_result_with_pii_after_escapes_reaches_the_model_and_the_store_masked(tmp_path):
    ScriptedDriver.prompts = []
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    with boot(tmp_path / "home", REDACTION_ON, default_model=str(model)) as k:
        script(*call("lookup"), *answer("Done."))
        proc = k.spawn("Look up the customer.", tools=["lookup"])
        assert proc.wait(30) and proc.answer == "Done."
        stored = k.sessions.get(proc.session_id).messages
    assert "returned:" in ScriptedDriver.prompts[-1]
    assert not leaks("".join(ScriptedDriver.prompts)), ScriptedDriver.prompts[-1]
    assert "Card:\\t[CARD]\\nCall [PHONE]" in ScriptedDriver.prompts[-1]
    assert json.loads(next(m for m in stored if m["role"] == "tool")["content"]) == "Card:\t[CARD]\nCall [PHONE]"


class RaisingPromptPlugin:
    @hookimpl
    def prepare_prompt(self, prompt):
        raise RuntimeError("this plugin is broken")


def test_a_raising_prepare_prompt_plugin_does_not_skip_redaction(tmp_path):
    """Redaction wraps the prepare_prompt hook: when another plugin raises there, the kernel goes on
    with the prompt as given, and that prompt must still be masked (it was sent unmasked)."""
    ScriptedDriver.prompts = []
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmos.toml").write_text(REDACTION_ON)
    pm = PluginManager(load_entrypoints=False)
    pm.register(NotesPlugin(), name="notes")
    pm.register(RaisingPromptPlugin(), name="raising")
    with llmos.boot(home=home, plugins=pm, default_model=str(model)) as k:
        script("One.", "Two.")
        k.generate(f"Mail {TRICKY['to']} or call {TRICKY['body']}", max_tokens=8)
        k.chat([{"role": "user", "content": TRICKY["body"]}], max_tokens=8)
        failures = [f.error for f in k.plugins.failures]
    assert len(ScriptedDriver.prompts) == 2, ScriptedDriver.prompts
    assert not leaks("".join(ScriptedDriver.prompts)), ScriptedDriver.prompts
    assert "[EMAIL]" in ScriptedDriver.prompts[0] and "[PHONE]" in ScriptedDriver.prompts[1]
    assert any("this plugin is broken" in str(e) for e in failures), failures


@pytest.mark.model
def test_rag_passages_are_masked_before_the_prompt_reaches_the_model(tmp_path):
    with boot(tmp_path / "home", REDACTION_ON, n_ctx=4096) as k:
        k.mem.write("/notes/support.md", "Support desk: write to jane.doe@example.com or call +1 415-555-0134.")
        handle = k.submit(messages=[{"role": "user", "content": "How do I reach the support desk?"}],
                          rag="/notes", max_tokens=1)
        handle.result(120)
    assert handle.request.sources == ["/notes/support.md"]
    system = handle.request.messages[0]["content"]
    assert "[/notes/support.md]" in system and "[EMAIL]" in system and "[PHONE]" in system
    assert not leaks(json.dumps(handle.request.messages)), system


# -- unknown llmos.toml keys ----------------------------------------------------------------------

@pytest.mark.parametrize("toml, needle", [
    ("[redaction]\nenabeld = true\n", "unknown [redaction] keys ['enabeld'] (did you mean 'enabled'?)"),
    ("[redactoin]\nenabled = true\n", "unknown table [redactoin] (did you mean 'redaction'?)"),
    ("default_model = 'smollm2'\n", "unknown top-level keys ['default_model'] (did you mean 'default_model' under"),
    ("[kernel]\nmax_quue = 3\n", "unknown [kernel] keys ['max_quue'] (did you mean 'max_queue'?)"),
    ("[models.mine]\npth = 'x.gguf'\n", "unknown [models.mine] keys ['pth'] (did you mean 'path'?)"),
    ("[models.c]\nnodes = [{url = 'http://h:1', api_ky = 'k'}]\n", "unknown [models.c.nodes] keys ['api_ky']"),
    ("[capabilities]\ngrnt = ['net']\n", "unknown [capabilities] keys ['grnt'] (did you mean 'grant'?)"),
    ("[mcp.servers.files]\ncommand = 'x'\nargz = []\n", "unknown [mcp.servers.files] keys ['argz']"),
    ("[audit]\nmax_age_day = 3\n", "unknown [audit] keys ['max_age_day'] (did you mean 'max_age_days'?)"),
    ("[sessions]\nmax_cont = 3\n", "unknown [sessions] keys ['max_cont'] (did you mean 'max_count'?)"),
    ("[sessions]\nmax_count = -1\n", "[sessions] max_count must be a number >= 0"),
    ("[weather]\nunti = 'c'\n", "unknown [weather] keys ['unti'] (did you mean 'unit'?)"),
    ("[server]\nport = 9\n", "unknown table [server]"),
])
def test_an_unknown_config_key_anywhere_stops_the_boot_naming_it(tmp_path, toml, needle):
    with pytest.raises(ConfigError) as info:
        boot(tmp_path / "home", toml)
    assert str(tmp_path / "home" / "llmos.toml") in str(info.value) and needle in str(info.value), str(info.value)


def test_tables_a_plugin_declares_are_accepted(tmp_path):
    with boot(tmp_path / "home", "[weather]\nunit = 'c'\n[weather.cities]\noslo = 1\n") as k:
        assert k.config.sections["weather"] == {"unit": "c", "cities": {"oslo": 1}}


@pytest.mark.cli
def test_cli_refuses_a_misspelled_redaction_key_in_one_line(tmp_path):
    (tmp_path / "llmos.toml").write_text("[redaction]\nenabled = true\npaterns = ['x']\n")
    r = run_llmos("tools", "--json", timeout=60, env={"LLMOS_HOME": str(tmp_path)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    error = json.loads(r.stdout)["error"]
    assert error["code"] == "invalid_config" and "unknown [redaction] keys ['paterns']" in error["message"]


# -- retention ------------------------------------------------------------------------------------

DAY = 86400.0


def test_the_audit_log_drops_old_entries_at_boot_and_stays_under_max_bytes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    now = time.time()
    (home / "audit.jsonl").write_text("".join(json.dumps({"ts": ts, "who": who, "tool": "note"}) + "\n" for ts, who in
                                             [(now - 100 * DAY, "old"), (now - 89 * DAY, "recent"),
                                              (now - 1, "new")]))
    with boot(home, "[audit]\nmax_bytes = 4000\n") as k:  # max_age_days: the default, 90
        assert [r["who"] for r in k.tools.audit.read()] == ["recent", "new"]
        for i in range(100):
            assert k.call_tool("note", {"to": "x", "body": f"note {i}"}).ok
        size = (home / "audit.jsonl").stat().st_size
        rows = k.tools.audit.read()
    assert 0 < size <= 4000 and rows[-1]["args"]["body"] == "note 99"  # the oldest went, the newest stayed
    assert [int(r["args"]["body"].split()[1]) for r in rows] == list(range(100 - len(rows), 100))


def test_the_session_store_drops_sessions_past_max_age_and_max_count(tmp_path):
    home = tmp_path / "home"
    with boot(home) as k:
        ids = [k.sessions.create(title=f"s{i}").id for i in range(6)]
        k.sessions.get(ids[0]).append({"role": "user", "content": "hello"})
        k.sessions.get(ids[1]).set_state("running")  # running in this (live) process: never pruned
    db = sqlite3.connect(home / "sessions.db")
    with db:
        db.execute("UPDATE sessions SET updated = ? WHERE id IN (?, ?, ?)", (time.time() - 100 * DAY, *ids[:3]))
        db.executemany("UPDATE sessions SET updated = ? WHERE id = ?",
                       [(time.time() - 10 + i, sid) for i, sid in enumerate(ids[3:])])
    db.close()
    with boot(home) as k:  # defaults: 90 days, 1000 sessions
        assert {s["id"] for s in k.sessions.list()} == {ids[1], *ids[3:]}
        assert k.sessions.get(ids[1]).state == "running"
    db = sqlite3.connect(home / "sessions.db")
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)  # the old session's messages went too
    db.close()
    with boot(home, "[sessions]\nmax_count = 2\n") as k:
        assert {s["id"] for s in k.sessions.list()} == {ids[1], ids[4], ids[5]}  # the running one is not counted
        new = k.sessions.create(title="newest").id
        assert {s["id"] for s in k.sessions.list()} == {ids[1], ids[5], new}


def test_session_retention_counts_per_owner_so_one_tenant_cannot_push_out_anothers(tmp_path):
    with boot(tmp_path / "home", "[sessions]\nmax_count = 2\n") as k:
        bobs = [k.sessions.create(title=f"bob {i}", owner="bob").id for i in range(2)]
        flood = [k.sessions.create(title=f"flood {i}", owner="mallory").id for i in range(6)]
        kept = {s["id"] for s in k.sessions.list()}
        assert kept == {*bobs, *flood[-2:]}  # mallory's oldest went, bob's stayed


def test_retention_defaults_are_documented(tmp_path):
    from llmos.kernel.config import RETENTION, Config

    docs = (Path(__file__).resolve().parents[1] / "docs" / "agents.md").read_text()
    assert Config.load(tmp_path).retention("audit") == RETENTION["audit"] == {"max_age_days": 90,
                                                                             "max_bytes": 50_000_000}
    assert RETENTION["sessions"] == {"max_age_days": 90, "max_count": 1000}
    assert "max_age_days = 90" in docs and "max_bytes = 50_000_000" in docs and "max_count = 1000" in docs
