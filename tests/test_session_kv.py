"""Chat sessions resume warm (drivers/session_kv.py, drivers/llamacpp_sessions.py): a turn's KV is saved at
its end under the session's key, and the next turn -- after a daemon restart too -- restores it and computes
only the new message. Damaged or stale files recompute (with a log line); the disk budget holds; a deleted
session's file goes; session names and ids never become paths."""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import pytest

import llmos
from llmos.drivers.session_kv import MAGIC, SessionKV, forget, session_file
from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.proc.sessions import SessionStore, UnknownSessionError, session_cache_key

from .test_daemon import Daemon

KEY = session_cache_key("owner", "chat-0123456789")
BASE = {"model_sha256": "a" * 64, "n_ctx": 2048, "type_k": 1, "llama_cpp": "v1"}
TOKENS = list(range(1, 301))

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
LOG = "Here is my harbour log. " + "Ships came in with cargo and the tide was high. " * 30 + "Summarize it."
TURN1 = [SYSTEM, {"role": "user", "content": LOG}]  # ~360 tokens: over MIN_SWAP_TOKENS
NEXT = {"role": "user", "content": "And what about the tide?"}


def _store(directory, disk: int = 10_000, file: int = 10_000) -> SessionKV:
    return SessionKV(directory, disk, file, BASE)


def at_least(floor: int):
    """A `worth` rule that restores when the file gives `floor` tokens or more."""
    return lambda n, nbytes: n >= floor


def _saved(store: SessionKV, key: str = KEY, tokens=TOKENS, state: bytes = b"s" * 500) -> None:
    assert store.save(key, store.fingerprint(None, None), tokens, state)
    store.flush()


# -- the store (no model) --------------------------------------------------------------------------

def test_a_saved_state_is_restored_for_its_key_and_fingerprint_when_it_covers_a_prefix(tmp_path):
    store = _store(tmp_path)
    _saved(store, state=b"kv" * 250)
    fp = store.fingerprint(None, None)
    assert store.restore(KEY, fp, TOKENS + [7, 8], limit=10_000, worth=at_least(256)) == (b"kv" * 250, 300, 300)
    assert store.restore(KEY, fp, TOKENS + [7, 8], limit=280, worth=at_least(256))[2] == 280  # never past the limit
    assert store.restore(KEY, fp, TOKENS, limit=10_000, worth=at_least(301)) is None  # not worth it: the RAM cache has it
    assert store.restore(KEY, fp, TOKENS[:100] + [0] * 200, limit=10_000, worth=at_least(256)) is None  # another history
    assert store.restore(session_cache_key("other", "chat-0123456789"), fp, TOKENS, 10_000, at_least(256)) is None
    assert store.recomputed == 0 and session_file(tmp_path, KEY).exists()  # a shorter match is no failure
    assert store.stats()["session_kv_tokens_restored"] == 580


def test_a_saved_session_is_restored_only_when_the_measured_costs_say_it_beats_recomputing(tmp_path):
    from llmos.drivers.llamacpp_sessions import SessionSaves
    from llmos.drivers.llamacpp_swap import SwapArea

    store = _store(tmp_path, disk=100_000, file=100_000)
    _saved(store, state=b"s" * 30_000)  # 300 tokens in 30 kB
    driver = SessionSaves()
    driver._session_kv, driver._swap, driver._adapter_paths = store, SwapArea(0), {}
    driver.options = SimpleNamespace(prefix_cache=True)
    new = SimpleNamespace(cache_key=KEY, adapter=None)
    costs = driver._swap.costs
    assert driver._session_candidate(new, TOKENS, 10_000, reuse=0) is not None  # unmeasured: 256-token rule
    assert driver._session_candidate(new, TOKENS, 10_000, reuse=100) is None  # 200 more tokens: under it
    costs.prefill_tps, costs.restore_bps["disk"] = 100.0, 1e6  # slow prefill: 30 ms of reading beats 2 s
    found = driver._session_candidate(new, TOKENS, 10_000, reuse=100)
    assert found is not None and found[1:] == (300, 300, KEY)
    driver._session_restored(found[0], 300, seconds=0.1)  # the restore measures the disk speed again
    assert 0 < costs.restore_bps["disk"] < 1e6
    costs.prefill_tps, costs.restore_bps["disk"] = 1e6, 1e6  # fast prefill: recomputing 200 tokens wins
    assert driver._session_candidate(new, TOKENS, 10_000, reuse=100) is None
    costs.prefill_tps = 1.0
    assert driver._session_candidate(new, TOKENS, 10_000, reuse=280) is None  # 20 tokens: never worth a read
    assert store.recomputed == 0  # declining a restore is no failure: the file stays
    assert session_file(tmp_path, KEY).exists()


def test_the_disk_budget_removes_the_least_recently_used_files(tmp_path):
    store = _store(tmp_path, disk=9000, file=2000)  # a file is ~2,700 bytes: three fit, not four
    keys = [session_cache_key("owner", f"chat-{i:010d}") for i in range(4)]
    fp = store.fingerprint(None, None)
    for key in keys[:3]:
        _saved(store, key, state=b"x" * 1000)
        time.sleep(0.01)
    assert store.restore(keys[0], fp, TOKENS, 10_000, at_least(256)) is not None  # used: now the most recent
    time.sleep(0.01)
    _saved(store, keys[3], state=b"y" * 1000)
    present = {k for k in keys if session_file(tmp_path, k).exists()}
    assert present == {keys[0], keys[2], keys[3]} and store.evicted == 1  # keys[1] was the least recently used
    assert sum(f.stat().st_size for f in tmp_path.glob("*.kv")) <= 9000
    assert store.stats()["session_kv_disk_bytes"] == sum(f.stat().st_size for f in tmp_path.glob("*.kv"))
    assert not store.save(keys[1], fp, TOKENS, b"z" * 2001) and store.skipped == 1  # over the per-file cap
    assert not SessionKV(None, 0, 0).enabled and not SessionKV(tmp_path, 0, 100).save(KEY, fp, TOKENS, b"s")


def _reheader(data: bytes, edit) -> bytes:
    """The saved file with its header (parsed, then rewritten by `edit`) changed; its state unchanged."""
    size = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big")
    header = edit(json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + size]))
    new = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + len(new).to_bytes(4, "big") + new + data[len(MAGIC) + 4 + size:]


_HEADER_DAMAGE = {  # what a disk error, another program or another version could leave in a header
    "huge_nbytes": lambda h: {**h, "nbytes": 2**40},  # read(2**40) would be a MemoryError on the step thread
    "negative_nbytes": lambda h: {**h, "nbytes": -5},
    "deep_json": lambda h: b"[" * 100_000 + b"]" * 100_000,  # json.loads: RecursionError
    "odd_tokens": lambda h: {**h, "tokens": ["a", None, 3]},
}


def _damage(data: bytes, change: str) -> bytes:
    if change in _HEADER_DAMAGE:
        return _reheader(data, _HEADER_DAMAGE[change])
    if change == "truncate":
        return data[:-100]
    if change == "alter":
        return data[:-1] + bytes([data[-1] ^ 1])
    if change == "header":
        return MAGIC + b"\xff\xff\xff\xff" + data[len(MAGIC) + 4:]
    return _reheader(data, lambda h: {**h, "fingerprint": {**h["fingerprint"], change: "something else"}})


@pytest.mark.parametrize("change, why", [
    ("truncate", "damaged"), ("alter", "damaged"), ("header", "header is damaged"),
    *((change, "header is damaged") for change in _HEADER_DAMAGE),
    ("model_sha256", "another model_sha256"), ("n_ctx", "another n_ctx"), ("llama_cpp", "another llama_cpp"),
    ("adapter", "another adapter")])
def test_a_damaged_or_stale_saved_file_is_recomputed_with_a_log_line(tmp_path, caplog, change, why):
    store = _store(tmp_path)
    _saved(store)
    path = session_file(tmp_path, KEY)
    path.write_bytes(_damage(path.read_bytes(), change))
    with caplog.at_level(logging.WARNING, logger="llmos.llamacpp"):
        assert store.restore(KEY, store.fingerprint(None, None), TOKENS, 10_000, at_least(256)) is None
    assert why in caplog.text and "recomputing" in caplog.text and store.recomputed == 1
    assert not path.exists()  # an unusable file is removed: the turn's end saves a good one


def test_session_names_and_ids_never_become_paths(tmp_path):
    store = SessionStore(tmp_path / "sessions.db")
    evil = store.create(name="../../etc/passwd", owner="alice")
    key = store.cache_key("../../etc/passwd")  # by name, as a client gives it
    assert key == store.cache_key(evil.id) == session_cache_key("alice", evil.id) and len(key) == 64
    assert key != session_cache_key("bob", evil.id)  # keyed by owner too
    assert session_file(tmp_path / "kv", key).parent == tmp_path / "kv"
    with pytest.raises(UnknownSessionError):  # another tenant's session is unknown to bob
        store.cache_key(evil.id, owner="bob")
    with pytest.raises(UnknownSessionError):
        store.cache_key("../../x")
    for bad in ("x" * 201, "", 7):
        with pytest.raises(InvalidRequestError) as err:
            store.cache_key(bad)
        assert err.value.param == "session"
    for bad in ("../" * 30, "a" * 10_000, KEY.upper()):
        with pytest.raises(ValueError):
            session_file(tmp_path, bad)
        kv = _store(tmp_path / "kv")
        assert not kv.save(bad, kv.fingerprint(None, None), TOKENS, b"s")
        assert kv.restore(bad, kv.fingerprint(None, None), TOKENS, 10_000, at_least(1)) is None
    assert not (tmp_path / "kv").exists() and sorted(p.name for p in tmp_path.iterdir())[0] == "sessions.db"


def test_a_deleted_or_pruned_session_takes_its_saved_kv_along(tmp_path):
    kv_dir = tmp_path / "kv"
    store = SessionStore(tmp_path / "sessions.db", on_delete=lambda keys: forget(kv_dir, keys))
    kv = _store(kv_dir)
    first, second = store.create(), store.create()
    for s in (first, second):
        _saved(kv, s.cache_key)
    store.delete(first.id)
    assert not session_file(kv_dir, first.cache_key).exists() and session_file(kv_dir, second.cache_key).exists()
    _saved(kv, first.cache_key)  # a write still pending when it was deleted never brings it back
    assert not session_file(kv_dir, first.cache_key).exists()
    store.max_count = 0
    third = store.create()
    _saved(kv, third.cache_key)
    store.max_count = 1  # retention: second is now one too many
    assert store.prune() == 1
    assert not session_file(kv_dir, second.cache_key).exists() and session_file(kv_dir, third.cache_key).exists()


# -- the real model: fresh kernels on one LLMOS_HOME -----------------------------------------------

def _boot(home, **settings):
    settings.setdefault("n_ctx", 2048)
    return llmos.boot(home=home, load_entrypoints=False, max_running=2, **settings)


@pytest.fixture(scope="module")
def saved_turn(tmp_path_factory):
    """A session's first turn saved by one kernel, and its second turn computed cold by another."""
    home = tmp_path_factory.mktemp("sessions") / "home"
    with _boot(home) as k:
        sid = k.sessions.open("harbour").id
        first = k.chat(TURN1, session=sid, max_tokens=12, temperature=0)
    (path,) = (home / "kv").glob("*.kv")
    second = TURN1 + [{"role": "assistant", "content": first.text}, NEXT]
    with _boot(home, kv_session_disk_mb=0) as k:  # the baseline: sessions' KV off, the context recomputed
        h = k.submit(messages=second, session=sid, max_tokens=16, temperature=0)
        cold = h.result(300)
    assert cold.metrics["cached_prompt_tokens"] == 0
    return SimpleNamespace(home=home, sid=sid, path=path, data=path.read_bytes(), second=second, cold=cold,
                           prompt=h.request.prompt_token_ids, first_prompt=first.usage["prompt_tokens"])


@pytest.mark.model
@pytest.mark.parametrize("change, why", [
    (None, None), ("alter", "damaged"), ("truncate", "damaged"), ("model_sha256", "another model_sha256"),
    ("llama_cpp", "another llama_cpp"), ("n_ctx", "another n_ctx")])
def test_the_next_turn_in_a_new_kernel_restores_the_saved_kv_or_recomputes_a_damaged_or_stale_one(
        saved_turn, scorer, caplog, change, why):
    t = saved_turn
    t.path.write_bytes(t.data if change is None or change == "n_ctx" else _damage(t.data, change))
    with caplog.at_level(logging.WARNING, logger="llmos.llamacpp"), \
            _boot(t.home, n_ctx=2560 if change == "n_ctx" else 2048) as k:  # n_ctx: the real setting differs
        done = k.submit(messages=t.second, session=t.sid, max_tokens=16, temperature=0).result(300)
        stats = k.load().driver.stats()
    cached = done.metrics["cached_prompt_tokens"]
    if change is None:  # warm: only the new message was computed
        assert stats["session_kv_restored"] == 1 and stats["session_kv_tokens_restored"] == cached
        assert cached > t.first_prompt and done.usage["prompt_tokens"] - cached < 30, (cached, done.usage)
        assert "recomputing" not in caplog.text
        assert stats["swap_in_disk_mb_per_s"] > 0  # the restore measured the disk speed the next decision uses
    else:
        assert cached == 0 and stats["session_kv_restored"] == 0 and stats["session_kv_recomputed"] == 1
        assert why in caplog.text and "recomputing" in caplog.text
    scorer.assert_same_or_near_tie(t.prompt, done.token_ids, t.cold.token_ids)


# -- a real daemon restart -------------------------------------------------------------------------

@pytest.fixture
def daemon(tmp_path):
    dm = Daemon(tmp_path / "home")
    yield dm
    dm.kill_all()


def _chat(uds, messages, session: str, max_tokens: int) -> dict:
    reply = uds.post("/v1/chat/completions", json={"model": "smollm2", "messages": messages, "session": session,
                                                   "max_tokens": max_tokens, "temperature": 0})
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.cli
@pytest.mark.model
def test_a_chat_session_resumes_warm_after_a_daemon_restart(daemon, kernel, scorer):
    daemon.up()
    with daemon.uds(timeout=300) as uds:
        session = uds.post("/llmos/sessions", json={"name": "../../escape"}).json()  # a name is no path
        first = _chat(uds, TURN1, "../../escape", 12)
        bad = uds.post("/v1/chat/completions", json={"model": "smollm2", "messages": TURN1, "session": "x" * 201})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "session"
        unknown = uds.post("/v1/chat/completions", json={"model": "smollm2", "messages": TURN1, "session": "../kv"})
        assert unknown.status_code == 404
    assert daemon.llmos("down").returncode == 0  # a clean stop: the turn's KV is on disk
    key = session_cache_key(session["owner"], session["id"])
    assert [p.name for p in (daemon.home / "kv").glob("*.kv")] == [f"{key}.kv"]

    daemon.up()  # a new process: nothing of the first is in RAM
    second = TURN1 + [{"role": "assistant", "content": first["choices"][0]["message"]["content"]}, NEXT]
    with daemon.uds(timeout=300) as uds:
        warm = _chat(uds, second, session["id"], 16)
        (engine,) = uds.get("/llmos/engines").json()
        cached = warm["llmos"]["metrics"]["cached_prompt_tokens"]
        computed = warm["usage"]["prompt_tokens"] - cached
        assert cached > first["usage"]["prompt_tokens"] and computed < 30, (cached, warm["usage"])
        assert engine["session_kv_restored"] == 1 and engine["session_kv_tokens_restored"] == cached
        prompt = kernel.load("smollm2").driver.tokenize_chat(second)
        assert len(prompt) == warm["usage"]["prompt_tokens"]
        # the warm turn's answer is the greedy continuation of the context computed from scratch
        scorer.assert_greedy(prompt, warm["llmos"]["token_ids"], "the warm turn after a restart")
        assert uds.delete(f"/llmos/sessions/{session['id']}").status_code == 200
        assert not list((daemon.home / "kv").glob("*.kv"))  # its saved KV went with it
    assert daemon.llmos("down").returncode == 0
    assert not list((daemon.home / "kv").glob("*.kv"))  # and its last turn's pending write did not come back
