"""Tenants over HTTP, several keys against one real `llmos serve` on loopback: identity from the key (never
from `user`), priority classes, token quotas and concurrency (429 with a Retry-After from the bucket),
isolation of processes, sessions and memfs homes (each denial audited), visibility (/llmos/tenants,
ps positions, /metrics), and keys that change while the server runs.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from llmos.kernel.tenants.keys import KeyStore

from .test_server_hardening import refused, served
from .util import LLMOS, wait_for

pytestmark = [pytest.mark.cli, pytest.mark.model]

ADMIN_KEY = "tenants-admin-key-789"
ASK = [{"role": "user", "content": "Say hi."}]
CHAT = {"model": "smollm2", "messages": ASK, "max_tokens": 4, "temperature": 0}
LONG = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 3000,
        "temperature": 0, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    where = tmp_path_factory.mktemp("tenants")
    home = where / "home"
    home.mkdir(parents=True)
    store = KeyStore(home)
    keys = {name: store.add(name, **options)[1] for name, options in {
        "alice": {}, "bob": {}, "reader": {"shared": ("/home/alice",)}, "nightly": {"priority": "batch"},
        "metered": {"tokens_per_minute": 600}, "slow": {"tokens_per_minute": 60}, "single": {"max_concurrency": 1},
    }.items()}
    with served(where, "--api-key", ADMIN_KEY, env={"LLMOS_MAX_RUNNING": "2"}) as (_proc, base):
        yield base, home, keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def as_(ctx, name: str) -> httpx.Client:
    base, _home, keys = ctx
    key = ADMIN_KEY if name == "admin" else keys[name]
    return httpx.Client(base_url=base, headers=auth(key), timeout=120)


@contextmanager
def streaming(client: httpx.Client, body: dict = LONG):
    """A long streamed request of `client`, running until the block ends; yields its request id."""
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # it is decoding
        yield r.headers["x-llmos-request-id"]


def audited_denials(home) -> list[dict]:
    lines = (home / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("decision") == "denied"]


def test_a_key_is_the_identity_and_user_is_only_a_label(tenants):
    base, _home, _keys = tenants
    refused(httpx.post(f"{base}/v1/chat/completions", json=CHAT), 401, "invalid_api_key")
    refused(httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth("llmos-not-a-key")), 401)
    with as_(tenants, "alice") as alice, as_(tenants, "admin") as admin:
        with streaming(alice, {**LONG, "user": "bob"}) as rid:
            [row] = [r for r in admin.get("/llmos/ps").json() if r["id"] == rid]
            assert row["owner"] == "alice" and row["user"] == "bob"  # posing as bob changes the label only
        assert alice.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_tenant_sees_and_kills_only_its_own_requests_and_every_denial_is_audited(tenants):
    _base, home, _keys = tenants
    with as_(tenants, "alice") as alice, as_(tenants, "bob") as bob, as_(tenants, "admin") as admin:
        with streaming(alice) as rid:
            assert rid not in [r["id"] for r in bob.get("/llmos/ps").json()]
            assert rid in [r["id"] for r in alice.get("/llmos/ps").json()]
            assert rid in [r["id"] for r in admin.get("/llmos/ps").json()]  # admins see all
            refused(bob.post(f"/llmos/kill/{rid}"), 403, "permission_denied", "request_id")
            assert rid in [r["id"] for r in alice.get("/llmos/ps").json()]  # still running
            assert any(e["who"] == "bob" and e["tool"] == "kill" and e["args"] == {"target": rid}
                       for e in audited_denials(home))
            assert alice.post(f"/llmos/kill/{rid}").json() == {"killed": rid}


def test_modules_admin_routes_and_drivers_need_an_admin(tenants):
    _base, home, _keys = tenants
    with as_(tenants, "bob") as bob, as_(tenants, "admin") as admin:
        refused(bob.post("/llmos/modules/anything/load"), 403, "admin_only")
        refused(bob.post("/llmos/modules/anything/unload"), 403, "admin_only")
        refused(bob.get("/llmos/status"), 403, "admin_only")
        refused(bob.get("/llmos/alerts"), 403, "admin_only")  # the machine's load and memory
        refused(bob.get("/metrics"), 403, "admin_only")  # every tenant's usage is in it
        refused(bob.post("/llmos/tokenize", json={"model": "/etc/passwd", "text": "x"}), 404)  # names, never paths
        refused(bob.post("/llmos/tokenize", json={"model": "smollm2", "text": "x" * 1_000_001}), 400)
        assert bob.post("/llmos/tokenize", json={"model": "smollm2", "text": "Hello"}).json()["tokens"]
        refused(bob.post("/v1/chat/completions", json={**CHAT, "driver": "llamacpp"}), 403, "admin_only", "driver")
        refused(bob.post("/llmos/models/load", json={"model": "smollm2", "driver": "torch"}), 403, "admin_only")
        refused(bob.post("/v1/chat/completions", json={**CHAT, "keep_alive": 0}), 403, "admin_only", "keep_alive")
        assert all("path" not in m for m in bob.get("/llmos/models").json())  # no paths of this machine
        assert all("path" in m for m in admin.get("/llmos/models").json())
        assert admin.get("/llmos/status").status_code == 200
        assert admin.get("/llmos/alerts").json()["rules"] == []
        refused(admin.post("/llmos/modules/anything/load"), 404)  # past the check: no such module
        refused(bob.get("/llmos/admin/" + "x" * 8000), 403, "admin_only")  # huge targets are cut in the log
        assert len(json.dumps(audited_denials(home)[-1])) < 1000
    denied = {(e["who"], e["tool"]) for e in audited_denials(home)}
    assert {("bob", "insmod"), ("bob", "rmmod"), ("bob", "http"), ("bob", "driver"), ("bob", "keep_alive")} <= denied


def test_a_priority_class_caps_what_requests_may_ask(tenants):
    with as_(tenants, "nightly") as nightly, as_(tenants, "alice") as alice, as_(tenants, "admin") as admin:
        refused(nightly.post("/v1/chat/completions", json={**CHAT, "priority": "normal"}), 403, param="priority")
        refused(alice.post("/v1/chat/completions", json=CHAT, headers={"X-Llmos-Priority": "high"}), 403,
                param="priority")
        assert alice.post("/v1/chat/completions", json=CHAT, headers={"X-Llmos-Priority": "low"}).status_code == 200
        assert any(e["who"] == "nightly" and e["tool"] == "priority" for e in audited_denials(tenants[1]))
        with streaming(nightly) as rid:  # asking nothing: the class's own priority
            [row] = [r for r in admin.get("/llmos/ps").json() if r["id"] == rid]
            assert row["priority"] == "batch"


def test_over_its_tokens_per_minute_a_tenant_gets_a_429_whose_retry_after_comes_from_its_bucket(tenants):
    waits = {}
    for name in ("metered", "slow"):  # 600 and 60 tokens per minute
        with as_(tenants, name) as client:
            first = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 16, "ignore_eos": True})
            assert first.status_code == 200, first.text
            used = first.json()["usage"]["total_tokens"]
            over = client.post("/v1/chat/completions", json=CHAT)
            error = refused(over, 429, "quota_exceeded")
            assert "tokens per minute" in error["message"]
            waits[name] = int(over.headers["retry-after"])
            # the debt the first request left, paid back at the tenant's rate (burst: 1 s of it)
            rate = {"metered": 10, "slow": 1}[name]
            assert waits[name] <= (used - rate) / rate + 2
    assert waits["slow"] >= 5 * waits["metered"] >= 5
    with as_(tenants, "metered") as client:
        time.sleep(waits["metered"])
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # the Retry-After was honest
    with as_(tenants, "admin") as admin:
        rows = {r["tenant"]: r for r in admin.get("/llmos/tenants").json()}
        assert rows["metered"]["throttled"] >= 1 and rows["slow"]["throttled"] >= 1


def test_over_its_concurrency_a_tenant_gets_a_429_and_others_are_not_held(tenants):
    with as_(tenants, "single") as single, as_(tenants, "bob") as bob:
        with streaming(single):
            refused(single.post("/v1/chat/completions", json=CHAT), 429, "quota_exceeded")
            assert bob.post("/v1/chat/completions", json=CHAT).status_code == 200
        wait_for(lambda: single.post("/v1/chat/completions", json=CHAT).status_code == 200, 30)


def test_sessions_are_their_tenants(tenants):
    _base, home, _keys = tenants
    with as_(tenants, "alice") as alice, as_(tenants, "bob") as bob, as_(tenants, "admin") as admin:
        made = alice.post("/llmos/sessions", json={"name": "alice-notes"}).json()
        assert made["owner"] == "alice"
        assert alice.post(f"/llmos/sessions/{made['id']}/messages", json={"role": "user", "content": "secret"}
                          ).status_code == 200
        assert made["id"] not in [s["id"] for s in bob.get("/llmos/sessions").json()]
        assert made["id"] in [s["id"] for s in admin.get("/llmos/sessions").json()]
        # another tenant's session is answered as one that does not exist (its name and id say nothing)
        missing = refused(bob.get("/llmos/sessions/no-such-session"), 404)
        for attempt in (bob.get(f"/llmos/sessions/{made['id']}"), bob.get("/llmos/sessions/alice-notes"),
                        bob.post(f"/llmos/sessions/{made['id']}/messages", json={"role": "user", "content": "x"}),
                        bob.patch(f"/llmos/sessions/{made['id']}", json={"system": "be evil"}),
                        bob.delete(f"/llmos/sessions/{made['id']}"),
                        bob.post("/llmos/agents", json={"session": made["id"]})):
            assert refused(attempt, 404)["code"] == missing["code"]
        taken = refused(bob.post("/llmos/sessions", json={"name": "alice-notes"}), 400, param="name")
        assert made["id"] not in taken["message"] and "alice" not in taken["message"].replace("alice-notes", "")
        refused(bob.post("/llmos/sessions", json={"name": "chat-0123456789"}), 400)  # looks like an id
        assert alice.get(f"/llmos/sessions/{made['id']}").json()["messages"] == [{"role": "user", "content": "secret"}]
        # a "running" session is never pruned: only the kernel (an admin) sets states
        refused(alice.patch(f"/llmos/sessions/{made['id']}", json={"state": "running"}), 403)
        assert admin.patch(f"/llmos/sessions/{made['id']}", json={"state": "idle"}).status_code == 200
    assert sum(e["who"] == "bob" for e in audited_denials(home)) >= 7


def test_memfs_a_tenant_reads_and_writes_its_home_and_reads_what_is_shared(tenants):
    with as_(tenants, "alice") as alice, as_(tenants, "bob") as bob, as_(tenants, "reader") as reader:
        note = {"path": "/home/alice/plan.md", "text": "The launch code word is heliotrope."}
        assert alice.put("/llmos/mem/write", json=note).status_code == 200
        assert bob.put("/llmos/mem/write", json={"path": "/home/bob/b.md", "text": "Bob likes tea."}).status_code == 200
        refused(bob.put("/llmos/mem/write", json={"path": "/home/alice/x.md", "text": "x"}), 403, "permission_denied")
        refused(bob.put("/llmos/mem/write", json={"path": "/shared.md", "text": "x"}), 403, "permission_denied")
        refused(bob.get("/llmos/mem/cat", params={"path": "/home/alice/plan.md"}), 403, "permission_denied")
        refused(bob.post("/llmos/mem/mv", json={"src": "/home/alice/plan.md", "dst": "/home/bob/p.md"}), 403)
        refused(bob.delete("/llmos/mem/rm", params={"path": "/home/alice", "recursive": True}), 403)
        refused(bob.post("/llmos/mem/find", json={"query": "launch", "within": "/home/alice"}), 403)
        found = bob.post("/llmos/mem/find", json={"query": "launch code word", "k": 10}).json()
        assert found and all(h["path"].startswith("/home/bob/") for h in found)  # "/": only what it may read
        grep = bob.post("/llmos/mem/grep", json={"pattern": "heliotrope"}).json()
        assert grep == []
        listed = [e["path"] for e in bob.get("/llmos/mem/ls", params={"path": "/home"}).json()]
        assert listed == ["/home/bob"]
        [home_dir] = [e for e in bob.get("/llmos/mem/ls", params={"path": "/"}).json() if e["path"] == "/home"]
        assert (home_dir["size"], home_dir["files"], home_dir["mtime"]) == (0, 0, 0.0)  # nothing of alice's writes
        refused(bob.post("/v1/chat/completions", json={**CHAT, "rag": "/home/alice"}), 403, param="rag")
        # shared with reader for reading: it reads, and may not write
        assert "heliotrope" in reader.get("/llmos/mem/cat", params={"path": "/home/alice/plan.md"}).json()["text"]
        hits = reader.post("/llmos/mem/find", json={"query": "launch code word"}).json()
        assert hits[0]["path"] == "/home/alice/plan.md"
        refused(reader.post("/llmos/mem/append", json={"path": "/home/alice/plan.md", "text": "x"}), 403)


def test_memfs_snapshots_act_on_a_whole_volume_so_only_an_admin_takes_or_rolls_them_back(tenants):
    with as_(tenants, "bob") as bob, as_(tenants, "admin") as admin:
        assert bob.put("/llmos/mem/write", json={"path": "/home/bob/s.md", "text": "before"}).status_code == 200
        refused(bob.post("/llmos/admin/mem/snapshots/root", json={"name": "b"}), 403, "admin_only")
        refused(bob.get("/llmos/admin/mem/snapshots"), 403, "admin_only")
        made = admin.post("/llmos/admin/mem/snapshots/root", json={"name": "http-snap"})
        assert made.status_code == 200 and made.json()["name"] == "http-snap"
        refused(admin.post("/llmos/admin/mem/snapshots/root", json={"name": "../etc"}), 400, param="name")
        refused(admin.post("/llmos/admin/mem/snapshots/nope", json={"name": "x"}), 404, param="volume")
        assert bob.put("/llmos/mem/write", json={"path": "/home/bob/s.md", "text": "after"}).status_code == 200
        refused(bob.post("/llmos/admin/mem/snapshots/root/http-snap/rollback"), 403, "admin_only")
        refused(admin.post("/llmos/admin/mem/snapshots/root/missing/rollback"), 404, param="name")
        assert admin.post("/llmos/admin/mem/snapshots/root/http-snap/rollback").status_code == 200
        assert bob.get("/llmos/mem/cat", params={"path": "/home/bob/s.md"}).json()["text"] == "before"
        assert "http-snap" in [s["name"] for s in admin.get("/llmos/admin/mem/snapshots").json()]
        assert admin.delete("/llmos/admin/mem/snapshots/root/http-snap").status_code == 200


def test_no_tenant_learns_anothers_prompt_from_the_prefix_cache(tenants):
    """Prefix KV is reused only within a tenant: bob sending alice's prompt computes it all (reuse count
    0), so `cached_prompt_tokens` (or a faster first token) tells him nothing; alice's repeat reuses it."""
    secret = {**CHAT, "messages": [{"role": "system", "content": "Alice's private plan: " + "merge the two teams, " * 12},
                                   {"role": "user", "content": "Say hi."}]}

    decoy = {**secret, "messages": [{"role": "system", "content": "Something else entirely."}, *secret["messages"][1:]]}

    def cached(client: httpx.Client, body: dict = secret) -> int:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["llmos"]["metrics"]["cached_prompt_tokens"]

    with as_(tenants, "alice") as alice, as_(tenants, "bob") as bob:
        cached(alice)
        bobs = cached(bob)
        assert cached(alice) > 50 and cached(bob) > 50  # each reuses its own
        template = cached(alice, decoy)  # what any system prompt shares with her own: the chat template's opening
        assert bobs <= template < 10  # bob reused at most that, from his own earlier requests: nothing of alice's


def test_tenants_view_ps_positions_and_metrics(tenants):
    with as_(tenants, "alice") as alice, as_(tenants, "bob") as bob, as_(tenants, "admin") as admin:
        with streaming(alice), streaming(alice):  # max_running is 2: the next one waits
            queued = threading.Thread(target=lambda: alice.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2}))
            queued.start()
            wait_for(lambda: any(r["state"] == "waiting" for r in alice.get("/llmos/ps").json()), 30)
            [row] = [r for r in alice.get("/llmos/ps").json() if r["state"] == "waiting"]
            assert row["position"] == 1
            mine = {r["tenant"]: r for r in alice.get("/llmos/tenants").json()}
            assert set(mine) == {"alice"} and mine["alice"]["queued"] == 1 and mine["alice"]["running"] == 2
            for r in alice.get("/llmos/ps").json():
                if r["state"] == "running":
                    alice.post(f"/llmos/kill/{r['id']}")
            queued.join(60)
        rows = {r["tenant"]: r for r in admin.get("/llmos/tenants").json()}
        assert {"alice", "bob", "metered"} <= set(rows)
        assert rows["alice"]["prompt_tokens"] > 0 and rows["alice"]["completion_tokens"] > 0
        assert rows["alice"]["requests"] >= 3
        assert set(r["tenant"] for r in bob.get("/llmos/tenants").json()) == {"bob"}
        text = admin.get("/metrics").text
        assert 'llmos_tenant_tokens_total{kind="prompt",tenant="alice"}' in text
        assert 'llmos_tenant_throttled_total{tenant="metered"}' in text


def test_keys_rotate_and_rm_take_effect_without_a_restart(tenants):
    base, home, keys = tenants
    env = {"LLMOS_HOME": str(home), "PATH": "/usr/bin:/bin"}
    made = subprocess.run([LLMOS, "keys", "add", "carol", "--json"], capture_output=True, text=True, env=env)
    carol = json.loads(made.stdout)["key"]
    assert httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth(carol), timeout=60).status_code == 200
    listed = subprocess.run([LLMOS, "keys", "ls", "--json"], capture_output=True, text=True, env=env).stdout
    assert carol not in listed and "hash" not in listed and "carol" in listed
    assert carol not in (home / "keys.json").read_text()  # only its hash is kept
    rotated = subprocess.run([LLMOS, "keys", "rotate", "carol", "--json"], capture_output=True, text=True, env=env)
    new = json.loads(rotated.stdout)["key"]
    refused(httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth(carol), timeout=60), 401)
    assert httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth(new), timeout=60).status_code == 200
    assert subprocess.run([LLMOS, "keys", "rm", "carol"], env=env, capture_output=True).returncode == 0
    refused(httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth(new), timeout=60), 401)
    for name in ("owner", "shell"):  # the kernel's identities, and the owner of the shell's own requests
        bad = subprocess.run([LLMOS, "keys", "add", name], capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and "reserved" in bad.stderr


def test_an_unreadable_keys_file_refuses_everyone_and_loses_nothing_and_no_keys_never_opens_the_server(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    key = KeyStore(home).add("alice")[1]
    with served(tmp_path) as (_proc, base):
        assert httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth(key), timeout=60).status_code == 200
        good = (home / "keys.json").read_text()
        (home / "keys.json").write_text(good[: len(good) // 2])  # a half-written file (not how llmos writes it)
        for headers in (auth(key), {}):
            error = refused(httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers, timeout=60), 503)
            assert "keys.json" in error["message"]  # says which file to fix
        (home / "keys.json").write_text(good)
        assert httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth(key), timeout=60).status_code == 200
        (home / "keys.json").unlink()  # as the 503 suggests ("move it away"), or `keys rm` of the last key
        refused(httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=60), 401)  # still needs a key


def test_on_the_unix_socket_a_client_is_the_owner_unless_it_presents_a_key(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    key = KeyStore(home).add("alice")[1]
    sock = tmp_path / "s.sock"
    with served(tmp_path, "--socket", str(sock)) as (_proc, base):
        local = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=120)
        with local, httpx.Client(base_url=base, headers=auth(key), timeout=120) as alice:
            with streaming(local) as owners:  # no key: the owner's
                assert owners not in [r["id"] for r in alice.get("/llmos/ps").json()]
                local.headers.update(auth(key))  # the same socket, with alice's key: alice
                assert [r["id"] for r in local.get("/llmos/ps").json()] == []
                refused(local.post(f"/llmos/kill/{owners}"), 403, "permission_denied")
                refused(local.get("/llmos/status"), 403, "admin_only")
                del local.headers["authorization"]
                assert local.get("/llmos/status").status_code == 200
                assert local.post(f"/llmos/kill/{owners}").json() == {"killed": owners}


def test_keys_changed_by_two_processes_at_once_lose_no_update(tmp_path):
    import sys

    script = ("import sys; from llmos.kernel.tenants.keys import KeyStore\n"
              "store = KeyStore(sys.argv[1])\n"
              "for i in range(15): store.add(f'{sys.argv[2]}{i}')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), who]) for who in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    names = {t.name for t in KeyStore(tmp_path).tenants()}
    assert names == {f"{who}{i}" for who in "ab" for i in range(15)}


def test_one_tenant_cannot_take_every_agent_place(tenants):
    with as_(tenants, "alice") as alice, as_(tenants, "bob") as bob:
        body = {"goal": "Write a long story about a dragon.", "max_tokens": 4096, "detach": True}
        pids = []
        try:
            for _ in range(4):  # half of the server's 8 places
                made = alice.post("/llmos/agents", json=body)
                assert made.status_code == 200, made.text
                pids.append(made.json()["pid"])
            error = refused(alice.post("/llmos/agents", json=body), 429, "queue_full")
            assert "tenant 'alice'" in error["message"]
            made = bob.post("/llmos/agents", json=body)  # another tenant still gets a place
            assert made.status_code == 200, made.text
            pids.append(made.json()["pid"])
        finally:
            for pid in pids:
                (bob if pid == pids[-1] and len(pids) == 5 else alice).post(f"/llmos/kill/{pid}")
