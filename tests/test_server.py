"""`llmos serve` on loopback with the real SmolLM2, driven by the official openai client and httpx."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time

import httpx
import pytest

from .util import LLMOS, cancelled_total, free_port, start_server as start, wait_for

pytestmark = [pytest.mark.model, pytest.mark.cli]

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, base = start(tmp_path_factory.mktemp("srv"), "--api-key", KEY)
    yield base
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def test_openai_client_round_trips(client):
    r = client.chat.completions.create(model="smollm2", max_tokens=16, temperature=0,  # greedy: compared below
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    stream = client.chat.completions.create(model="smollm2", max_tokens=16, stream=True, temperature=0,
                                            messages=[{"role": "user", "content": "What is the capital of France?"}])
    chunks = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(chunks) == r.choices[0].message.content and len(chunks) > 3
    text = client.completions.create(model="smollm2", prompt="One, two, three,", max_tokens=4).choices[0].text
    assert text.strip()
    ids = [m.id for m in client.models.list().data]
    assert {"smollm2", "gemma3-270m", "all-minilm-l6-v2"} <= set(ids)
    emb = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a kitten", "a truck"])
    vecs = [d.embedding for d in emb.data]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert len(vecs[0]) == 384 and dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])
    from transformers import AutoTokenizer

    from llmos.drivers.embedder import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())  # the tokens the model read: [CLS] ... [SEP]
    assert emb.usage.prompt_tokens == emb.usage.total_tokens == sum(
        len(tok(t)["input_ids"]) for t in ["a cat", "a kitten", "a truck"]) > 6


def test_concurrent_embedding_requests_each_get_what_they_get_alone(client):
    """Requests that wait together share a batch in the kernel's embedding queue (the batching logic:
    test_embedding_queue.py); whatever batch a request lands in, its rows are its own."""
    inputs = [[f"request {i}: a sentence about {topic}" for topic in ("owls", "trains", "tea")[: i % 3 + 1]]
              for i in range(6)]
    alone = [[d.embedding for d in client.embeddings.create(model="all-minilm-l6-v2", input=x).data]
             for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda x: client.embeddings.create(model="all-minilm-l6-v2", input=x), inputs))
    for want, got in zip(alone, together):
        assert len(got.data) == len(want) and [d.index for d in got.data] == list(range(len(want)))
        for a, b in zip(want, got.data):
            assert max(abs(x - y) for x, y in zip(a, b.embedding)) < 1e-4  # padding in a batch: float noise only


def _events(server: str, body: dict) -> list[dict]:
    """The object of each `data:` event of a streamed chat request, [DONE] left out."""
    out = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                out.append(json.loads(line[len("data: "):]))
    return out


def test_stream_interval_ms_joins_the_deltas_at_the_clients_cadence(server):
    body = {"model": "smollm2", "max_tokens": 60, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Write about the sea."}]}
    plain = _events(server, body)
    started = time.monotonic()
    paced = _events(server, {**body, "stream_interval_ms": 250})
    took = time.monotonic() - started
    text = lambda events: "".join(e["choices"][0]["delta"].get("content") or "" for e in events)  # noqa: E731
    assert text(paced) == text(plain) and paced[-1]["usage"] == plain[-1]["usage"]
    content = [e for e in paced if e["choices"][0]["delta"].get("content")]
    # 60 tokens in deltas as they come, at most one per 250 ms (+ the first and the last), not one event a
    # token, nor one at the end (the gaps between deltas: tests/test_stream_cadence.py, on the server's clock)
    assert 2 <= len(content) <= took / 0.25 + 2 and len(content) < len(plain) - 1
    h = {"Authorization": f"Bearer {KEY}"}
    for bad in (-1, 5000, "fast", 250.5, True):
        r = httpx.post(f"{server}/v1/chat/completions", headers=h, json={**body, "stream_interval_ms": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_interval_ms", r.text


def test_errors_have_the_openai_shape_and_status(server, client):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", temperature=9, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["param"] == "temperature"
    bad_key = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/health").status_code == 200
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{server}/v1/chat/completions", headers=h, json={"model": "smollm2", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(f"{server}/v1/completions", headers=h, json={"model": "smollm2", "prompt": "word " * 9000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(f"{server}/v1/completions", headers={**h, "content-type": "application/json"},
                   content=b"{" + b" " * (5 << 20) + b"}")
    assert r.status_code == 413
    assert "llmos_requests_total" in httpx.get(f"{server}/metrics", headers=h).text


def test_disconnect_cancels_the_request(server):
    h = {"Authorization": f"Bearer {KEY}"}
    before = cancelled_total(server)
    body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server}/v1/completions", headers=h, json=body, timeout=60) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 5:
                break
    wait_for(lambda: cancelled_total(server, headers=h) > before, 20, lambda: "no cancelled request was counted")
    assert cancelled_total(server, headers=h) == before + 1  # this one request, cancelled once
    assert httpx.get(f"{server}/llmos/ps", headers=h).json() == []  # and nothing of it is left running


def test_full_queue_gives_429_with_retry_after(tmp_path):
    proc, base = start(tmp_path, "--max-queue", "1", env={"LLMOS_MAX_RUNNING": "1"})
    try:
        body = {"model": "smollm2", "prompt": "Tell me a story", "max_tokens": 150}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _i: httpx.post(f"{base}/v1/completions", json=body, timeout=120),
                                      range(6)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes, codes
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.headers["retry-after"] and limited.json()["error"]["type"] == "rate_limit_error"
    finally:
        proc.terminate()
        proc.wait(30)


def test_public_address_without_key_is_refused(tmp_path):
    r = subprocess.run([LLMOS, "serve", "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "LLMOS_HOME": str(tmp_path)})
    assert r.returncode == 2 and "without an API key" in r.stderr


def test_llmos_extras(server):
    h = {"Authorization": f"Bearer {KEY}"}
    w = httpx.put(f"{server}/llmos/mem/write", headers=h, json={"path": "/api/note.md", "text": "Owls hunt at night."})
    assert w.status_code == 200 and w.json()["path"] == "/api/note.md"
    assert httpx.get(f"{server}/llmos/mem/cat", headers=h, params={"path": "/api/note.md"}).json()["text"] == \
        "Owls hunt at night."
    hits = httpx.post(f"{server}/llmos/mem/find", headers=h, json={"query": "nocturnal birds"}).json()
    assert hits[0]["path"] == "/api/note.md"
    bad = httpx.get(f"{server}/llmos/mem/cat", headers=h, params={"path": "/../etc/passwd"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "path"
    assert isinstance(httpx.get(f"{server}/llmos/ps", headers=h).json(), list)
    assert httpx.post(f"{server}/llmos/kill/req-nope", headers=h).status_code == 404
    assert httpx.get(f"{server}/llmos/modules", headers=h).json() == []


def test_ps_and_kill_from_the_cli(server):
    env = {**os.environ, "LLMOS_URL": server, "LLMOS_API_KEY": KEY, "NO_COLOR": "1"}
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 1500, "stream": True,
            "ignore_eos": True}  # it runs until killed: a story that ended early would leave nothing to kill
    with httpx.stream("POST", f"{server}/v1/completions", headers=h, json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        rows = json.loads(subprocess.run([LLMOS, "ps", "--json"], capture_output=True, text=True, env=env,
                                         timeout=60).stdout)
        [row] = [x for x in rows if x["driver"] == "llamacpp"]
        assert row["state"] == "running" and row["model"] == "smollm2"
        killed = subprocess.run([LLMOS, "kill", row["id"]], capture_output=True, text=True, env=env, timeout=60)
        assert killed.returncode == 0, killed.stderr
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    missing = subprocess.run([LLMOS, "ps"], capture_output=True, text=True, timeout=60,
                             env={**env, "LLMOS_URL": "http://127.0.0.1:9"})
    assert missing.returncode != 0 and "does not answer" in missing.stderr and "llmos up" in missing.stderr


def test_response_format_json_schema_is_honoured(client):
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="smollm2", max_tokens=60, temperature=0, messages=[{"role": "user", "content": "Name the capital of France."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="smollm2", max_tokens=60, messages=messages, tools=[WEATHER_TOOL],
                                       tool_choice="required", temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "sunny"}'}]
    final = client.chat.completions.create(model="smollm2", max_tokens=40, messages=messages, tools=[WEATHER_TOOL],
                                           tool_choice="none", temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length") and final.choices[0].message.content.strip()
    streamed = client.chat.completions.create(model="smollm2", max_tokens=60, messages=messages[:1],
                                              tools=[WEATHER_TOOL], tool_choice="required", stream=True, temperature=0)
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.tool_calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.fixture(scope="module")
def torch_server(kernel, tmp_path_factory):
    """A server whose model `smollm2-hf` is SmolLM2 as the Hugging Face directory the torch driver
    dequantized it into (an llmos.toml table): only the torch driver loads it."""
    hf_dir = kernel.load("smollm2", driver="torch").driver.model_dir
    tmp = tmp_path_factory.mktemp("torch-srv")
    (tmp / "home").mkdir()
    (tmp / "home" / "llmos.toml").write_text(f'[models.smollm2-hf]\npath = "{hf_dir}"\n')
    proc, base = start(tmp, "--api-key", KEY)
    yield base
    proc.terminate()
    proc.wait(30)


def test_response_format_json_schema_and_tools_are_honoured_on_torch(torch_server):
    import jsonschema
    import openai

    client = openai.OpenAI(base_url=f"{torch_server}/v1", api_key=KEY, max_retries=0)
    torch_only_model = "smollm2-hf"

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                               "country": {"type": "string", "maxLength": 40}},
              "required": ["city", "country"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=torch_only_model, max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "Name the capital of France."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client.chat.completions.create(model=torch_only_model, max_tokens=60, tools=[WEATHER_TOOL],
                                       tool_choice="required", temperature=0,
                                       messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    [call] = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    with pytest.raises(openai.BadRequestError) as info:  # a schema no grammar expresses: a 400 naming it
        client.chat.completions.create(
            model=torch_only_model, max_tokens=8, messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}})
    assert info.value.body["param"] == "json_schema" and '"type": "foo"' in info.value.body["message"]
    engines = httpx.get(f"{torch_server}/llmos/engines", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [e["driver"] for e in engines if e["model"] == torch_only_model] == ["torch"], engines


def test_agents_and_sessions_over_http(server):
    h = {"Authorization": f"Bearer {KEY}"}
    spawned = httpx.post(f"{server}/llmos/agents", headers=h, timeout=30,
                         json={"goal": "What time is it?", "tools": ["now"], "max_steps": 3})
    assert spawned.status_code == 200, spawned.text
    pid, session = spawned.json()["pid"], spawned.json()["session"]
    deadline = time.monotonic() + 120
    while (row := httpx.get(f"{server}/llmos/agents/{pid}", headers=h).json())["state"] not in (
            "finished", "failed", "out_of_budget", "killed"):
        assert time.monotonic() < deadline, row
        time.sleep(0.2)
    assert row["state"] == "finished" and row["answer"] and any(e["kind"] == "tool_call" for e in row["events"])
    listed = httpx.get(f"{server}/llmos/sessions", headers=h).json()
    assert session in [s["id"] for s in listed]
    shown = httpx.get(f"{server}/llmos/sessions/{session}", headers=h).json()
    assert shown["kind"] == "agent" and shown["messages"][0]["content"] == "What time is it?"
    md = httpx.get(f"{server}/llmos/sessions/{session}", headers=h, params={"format": "md"}).json()["text"]
    assert "assistant → now" in md
    assert httpx.delete(f"{server}/llmos/sessions/{session}", headers=h).status_code == 200
    gone = httpx.get(f"{server}/llmos/sessions/{session}", headers=h)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    bad = httpx.post(f"{server}/llmos/agents", headers=h, json={"goal": "x", "tools": ["nope"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools"
