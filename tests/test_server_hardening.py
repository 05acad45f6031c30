"""A hostile client against a real `llmos serve` on loopback (issue 14, the HTTP surface).

Every refusal is a 4xx in OpenAI's error shape: never a 5xx, a hung request or a stalled server.
Servers start with --no-preload, and the tests without the `model` mark check that nothing loaded."""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from llmos.kernel.errors import UnknownModelError
from llmos.kernel.models.registry import ModelRegistry
from llmos.kernel.sched.request import next_request_id

from .util import run_llmos, start_server, wait_for

KEY = "hardening-key-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
EMBEDDER = "all-minilm-l6-v2"


@contextmanager
def served(tmp_path, *args: str, env: dict | None = None):
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    proc, base = start_server(tmp_path, "--no-preload", *args, env=env)
    try:
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(30)


def refused(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def nothing_loaded(base: str) -> bool:
    return httpx.get(f"{base}/health").json()["models_loaded"] == []


def address(base: str) -> tuple[str, int]:
    return "127.0.0.1", int(base.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """No API key (the default), a 2 s header timeout, one extra Host name and one allowed web origin."""
    with served(tmp_path_factory.mktemp("hard"), "--header-timeout", "2", "--allowed-host", "llmos.lan",
                "--allow-origin", "http://app.example") as (_proc, base):
        yield base


# -- models: served names only, never a path ----------------------------------------------------------

@pytest.mark.cli
def test_over_http_a_model_is_a_served_name_never_a_path(server, tmp_path):
    messages = []
    for name in ("/etc/passwd", "/nonexistent/x.gguf", "../../../etc/passwd", "/etc/passwd:lora"):
        chat = httpx.post(f"{server}/v1/chat/completions", json={"model": name, "messages": ASK}, timeout=60)
        messages.append(refused(chat, 404, "model_not_found", "model")["message"])
        refused(httpx.post(f"{server}/v1/completions", json={"model": name, "prompt": "x"}, timeout=60), 404)
        refused(httpx.post(f"{server}/llmos/agents", json={"goal": "x", "model": name}, timeout=60), 404)
    # one message whatever the filesystem holds: only the echoed name differs
    [text] = {m.split("': ", 1)[1] for m in messages}
    assert not any(word in text for word in ("GGUF", "exist", "directory", "path")), text
    assert nothing_loaded(server)
    # the Python API (and the CLI) keep paths
    registry = ModelRegistry(tmp_path)
    gguf = str(registry.resolve("smollm2").path)
    assert registry.resolve(gguf).source == "path"
    with pytest.raises(UnknownModelError):
        registry.resolve(gguf, allow_paths=False)


# -- DNS rebinding and cross-site requests --------------------------------------------------------------

@pytest.mark.cli
def test_without_a_key_only_loopback_hosts_and_allowed_origins_are_answered(server):
    port = address(server)[1]
    models = f"{server}/v1/models"
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", f"localhost.evil.example:{port}"):
        refused(httpx.get(models, headers={"Host": host}), 400, "host_not_allowed")
    refused(httpx.post(f"{server}/llmos/kill/req-1", headers={"Host": f"rebound.example:{port}"}), 400,
            "host_not_allowed")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"llmos.lan:{port}"):
        assert httpx.get(models, headers={"Host": host}).status_code == 200, host
    # a web page's request is refused unless its origin is allowed or is the server's own
    for origin in ("http://evil.example", "null", f"http://localhost.evil.example:{port}"):
        r = httpx.post(f"{server}/llmos/kill/req-1", headers={"Origin": origin})
        refused(r, 403, "origin_not_allowed")
        assert "access-control-allow-origin" not in r.headers
    preflight = httpx.options(models, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    refused(preflight, 403, "origin_not_allowed")
    assert httpx.get(models, headers={"Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    allowed = httpx.get(models, headers={"Origin": "http://app.example"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://app.example"


def test_request_ids_are_unguessable():
    ids = [next_request_id() for _ in range(1000)]  # agent pids: test_http_agents_are_capped_...
    assert len(set(ids)) == 1000 and all(re.fullmatch(r"req-[0-9a-f]{16}", i) for i in ids), ids[:3]


# -- the API key -----------------------------------------------------------------------------------------

@pytest.mark.cli
def test_metrics_need_the_key_unless_public_metrics_and_the_key_stays_out_of_ps(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with served(tmp_path / "a", "--api-key-file", str(key_file)) as (proc, base):
        assert KEY not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        refused(httpx.get(f"{base}/metrics"), 401, "invalid_api_key")
        assert "llmos_requests_total" in httpx.get(f"{base}/metrics", headers=AUTH).text
        assert httpx.get(f"{base}/health").status_code == 200
        # the exemption compares the ASGI path, never a URL rebuilt from a malformed Host
        for host in ("x/health?", "x/health#", "127.0.0.1/metrics?a="):
            refused(httpx.get(f"{base}/v1/models", headers={"Host": host}), 401, "invalid_api_key")
            refused(httpx.get(f"{base}/llmos/ps", headers={"Host": host}), 401, "invalid_api_key")
    with served(tmp_path / "b", "--api-key", KEY, "--public-metrics") as (_proc, base):
        assert "llmos_requests_total" in httpx.get(f"{base}/metrics").text
        refused(httpx.get(f"{base}/v1/models"), 401, "invalid_api_key")
        log = next((tmp_path / "b").glob("serve-*.log")).read_text()
        assert "visible to every user in `ps`" in log
    both = run_llmos("serve", "--api-key-file", str(key_file), env={"LLMOS_API_KEY": KEY}, timeout=60)
    assert both.returncode == 2 and "once" in both.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    missing = run_llmos("serve", "--api-key-file", str(empty), timeout=60)
    assert missing.returncode == 2 and "empty" in missing.stderr


# -- bodies and slow connections -----------------------------------------------------------------------

def _response_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.cli
def test_a_body_over_the_limit_is_413_even_chunked_and_a_stalled_body_is_408(server):
    def five_megabytes():
        for _ in range(50):
            yield b"x" * 100_000

    r = httpx.post(f"{server}/v1/completions", content=five_megabytes(), headers={"content-type": "application/json"},
                   timeout=60)
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    refused(r, 413, "body_too_large")
    with socket.create_connection(address(server), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\"")  # and then nothing
        assert _response_head(sock).startswith(b"HTTP/1.1 408 ")
    assert nothing_loaded(server)


@pytest.mark.cli
def test_idle_and_half_sent_connections_neither_block_clients_nor_stay_open(server):
    idle = [socket.create_connection(address(server)) for _ in range(100)]
    half = [socket.create_connection(address(server)) for _ in range(100)]
    try:
        for sock in half:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        assert httpx.get(f"{server}/v1/models", timeout=30).status_code == 200  # a real client meanwhile
        for sock in idle + half:  # the server closes each once the header timeout (2 s) is over
            sock.settimeout(60)
            assert sock.recv(1) == b""
    finally:
        for sock in idle + half:
            sock.close()
    # a head dripped a byte at a time does not restart the timer
    with socket.create_connection(address(server)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        with pytest.raises(OSError):  # the server closed the connection: writing to it fails
            for _i in range(600):  # 60 s at most
                sock.sendall(b"a")
                time.sleep(0.1)
    assert httpx.get(f"{server}/health").status_code == 200


# -- bad bodies are 4xx, never 5xx ----------------------------------------------------------------------

def _after(message: dict) -> list[dict]:
    return [*ASK, message]


BAD_BODIES = [  # (id, body fields beyond model, the parameter the 400 must name)
    ("tool_choice function not an object", {"messages": ASK, "tools": [WEATHER],
                                            "tool_choice": {"type": "function", "function": "x"}}, "tool_choice"),
    ("tool_choice without a function", {"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "function"}},
     "tool_choice"),
    ("tool_choice of another type", {"messages": ASK, "tools": [WEATHER],
                                     "tool_choice": {"type": "retrieval", "function": {"name": "get_weather"}}},
     "tool_choice"),
    ("tool parameters not an object", {"messages": ASK, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools"),
    ("tool description not a string", {"messages": ASK, "tools": [
        {"type": "function", "function": {"name": "f", "description": 3}}]}, "tools"),
    ("assistant tool_calls [{}]", {"messages": _after({"role": "assistant", "tool_calls": [{}]})},
     "messages.1.tool_calls.0.function"),
    ("tool_calls arguments not JSON", {"messages": _after({"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]})},
     "messages.1.tool_calls.0.function.arguments"),
    ("tool_calls arguments a JSON list", {"messages": _after({"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "[1, 2]"}}]})},
     "messages.1.tool_calls.0.function.arguments"),
    ("tool_calls not a list", {"messages": _after({"role": "assistant", "tool_calls": "get_weather"})},
     "messages.1.tool_calls"),
    ("content part text not a string", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     None),
]


@pytest.mark.cli
@pytest.mark.parametrize("case", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_malformed_tool_fields_are_a_400_naming_the_field(server, case):
    _name, fields, param = case
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "smollm2", **fields}, timeout=60)
    refused(r, 400, param=param)
    assert nothing_loaded(server)  # refused before anything reached the kernel


# -- embeddings and agents: bounded --------------------------------------------------------------------

def _owners(base: str) -> dict[str, str]:
    return {row["user"]: row["state"] for row in httpx.get(f"{base}/llmos/ps").json()}


@pytest.mark.cli
@pytest.mark.model
@pytest.mark.parametrize("rag, names", [
    ({"path": "/docs", "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"path": "/docs", "k": 33}, "k: Input should be less than or equal to 32"),
    ({"path": "/docs", "K": 3}, "K: Extra inputs are not permitted"),
    ({"k": 3}, "path: Field required"),
    (7, "must be a memfs directory"),
    ("/" + "d" * 5000, "must be a memfs directory"),
])
def test_a_malformed_rag_extension_is_a_400_naming_what_to_fix(server, rag, names):
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "rag": rag})
    assert names in refused(r, 400, param="rag")["message"]
    assert nothing_loaded(server)


def test_embeddings_are_capped_queued_and_cancelled_with_their_client(tmp_path):
    with served(tmp_path, "--max-queue", "1") as (_proc, base):
        url = f"{base}/v1/embeddings"
        refused(httpx.post(url, json={"model": EMBEDDER, "input": ["x"] * 257}), 400, param="input")
        refused(httpx.post(url, json={"model": EMBEDDER, "input": "y" * 16_385}), 400, param="input")
        refused(httpx.post(url, json={"model": "/etc/passwd", "input": "x"}), 404, "model_not_found")
        assert httpx.post(url, json={"model": EMBEDDER, "input": "warm up"}, timeout=300).status_code == 200
        # a full queue answers 429 with Retry-After (one job runs, one waits, the rest are refused)
        batch = {"model": EMBEDDER, "input": [f"text {i}: " + "lorem ipsum dolor " * 60 for i in range(16)]}
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _i: httpx.post(url, json=batch, timeout=300), range(6)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes, codes
        limited = next(r for r in responses if r.status_code == 429)
        refused(limited, 429, "queue_full")
        assert int(limited.headers["retry-after"]) >= 1
        # a client that leaves while its job waits: the job is dropped, not run after the one in front
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, url, json={**batch, "input": batch["input"] * 16, "user": "first"},
                                timeout=300)
            wait_for(lambda: _owners(base).get("first") == "running", 120)
            body = json.dumps({"model": EMBEDDER, "input": ["left"], "user": "leaver"}).encode()
            sock = socket.create_connection(address(base))
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            wait_for(lambda: _owners(base).get("leaver") == "waiting", 60)
            sock.close()
            wait_for(lambda: "leaver" not in _owners(base), 30)
            assert _owners(base).get("first") == "running"
            assert first.result().status_code == 200


@pytest.mark.cli
@pytest.mark.model
def test_http_agents_are_capped_and_get_only_the_tools_they_name(tmp_path):
    with served(tmp_path, "--max-agents", "1") as (_proc, base):
        url = f"{base}/llmos/agents"
        refused(httpx.post(url, json={"goal": "x", "max_steps": 10**9}), 400, param="max_steps")
        refused(httpx.post(url, json={"goal": "x", "max_tokens": 10**9}), 400, param="max_tokens")
        refused(httpx.post(url, json={"goal": "x", "tools": ["now"] * 65}), 400, param="tools")
        first = httpx.post(url, json={"goal": "Write a long story about a dragon.", "max_tokens": 4096}, timeout=60)
        assert first.status_code == 200, first.text
        pid, session = first.json()["pid"], first.json()["session"]
        assert re.fullmatch(r"agent-[0-9a-f]{16}", pid), pid  # unguessable: a pid is enough to kill it
        second = httpx.post(url, json={"goal": "Say hi."}, timeout=60)  # the first is still loading the model
        refused(second, 429, "queue_full")
        assert second.headers["retry-after"]
        assert httpx.get(f"{base}/llmos/sessions/{session}").json()["settings"]["tools"] == []
        assert httpx.post(f"{base}/llmos/kill/{pid}").status_code == 200
        wait_for(lambda: httpx.get(f"{url}/{pid}").json()["state"] == "killed", 120)
        assert httpx.post(url, json={"goal": "Say hi.", "max_tokens": 16}, timeout=60).status_code == 200


# -- dependencies ----------------------------------------------------------------------------------------

def test_the_starlette_floor_excludes_the_host_header_path_confusion():
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    reqs = {r.name: r.specifier for r in map(Requirement, pyproject["project"]["optional-dependencies"]["server"])}
    # GHSA-86qp-5c8j-p5mr (Host header poisons request.url.path, fixed in 1.0.1); PYSEC-2026-248 (the
    # path moves request.url's authority, fixed in 1.3.0)
    assert "starlette" in reqs and not reqs["starlette"].contains("1.0.0") and not reqs["starlette"].contains("1.2.9")
    assert reqs["starlette"].contains(importlib.metadata.version("starlette"))
    assert reqs["fastapi"].contains(importlib.metadata.version("fastapi"))
