"""Issue 14, engine part: one client's bad request never costs the engine or another client anything.

A JSON schema the grammar cannot express is refused at submit (a 400 over HTTP) and, should one reach
a step anyway, fails its own sequence alone; a remote node that streams garbage ends its request with
a message naming the node and frees the node's slot.
"""

from __future__ import annotations

import http.server
import json
import re
import threading

import httpx
import pytest

import llmos
from llmos.drivers.base import DriverOptions
from llmos.drivers.llamacpp import LlamaCppDriver
from llmos.kernel.config import Config
from llmos.kernel.errors import InvalidRequestError, RequestFailedError
from llmos.kernel.sched.interface import NewSequence, SchedulerOutput
from llmos.kernel.sched.request import SamplingParams

from .util import start_server, wait_for

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def _nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


BAD_SCHEMAS = [  # (id, schema, what the error must name)
    ("unknown type", {"type": "foo"}, '"type": "foo"'),
    ("unknown type deep inside", {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "x"}}}},
     "/properties/a/items"),
    ("200,000-long string", {"type": "string", "maxLength": 200000}, "maxLength"),
    ("200,000 items", {"type": "array", "items": {"type": "integer"}, "minItems": 200000}, "minItems"),
    ("length not a number", {"type": "string", "maxLength": "5"}, "maxLength"),
    ("min over max", {"type": "string", "minLength": 9, "maxLength": 3}, "minLength 9 is over maxLength 3"),
    ("30,000 repeats in a pattern", {"type": "string", "pattern": "^a{0,30000}$"}, "nest 30000 levels"),
    ("subschema not an object", {"type": "object", "properties": {"a": 5}}, "/properties/a"),
    ("huge schema", {"enum": ["value"] * 20000}, "characters of JSON"),
    ("nested 100 deep", _nested(100), "levels deep"),
    ("nested 5,000 deep", _nested(5000), "json_schema"),
    ("unresolvable $ref", {"$ref": "#/definitions/missing"}, "unsupported by constrained decoding"),
]


def test_a_schema_nested_past_the_json_parsers_own_depth_is_refused_not_a_recursion_error():
    """A schema as JSON text (how the drivers take it) nested 30,000 deep in 60 KB: under the size
    bound, past Python's JSON parser depth: refused as too deep, never a RecursionError in a step."""
    from llmos.drivers.json_grammar import check_schema

    with pytest.raises(InvalidRequestError, match="levels deep") as info:
        check_schema('{"enum": [' + "[" * 30_000 + "]" * 30_000 + "]}")
    assert info.value.param == "json_schema"


@pytest.mark.model
@pytest.mark.parametrize("schema, names", [c[1:] for c in BAD_SCHEMAS], ids=[c[0] for c in BAD_SCHEMAS])
def test_a_bad_json_schema_is_refused_at_submit_naming_the_problem(kernel, schema, names):
    failures = [e["failures"] for e in kernel.engines()]
    with pytest.raises(InvalidRequestError) as info:
        kernel.submit(messages=ASK, json_schema=schema, max_tokens=8)
    assert info.value.param == "json_schema" and names in str(info.value), info.value
    assert kernel.ps() == [] and [e["failures"] for e in kernel.engines()] == failures  # nothing queued, no reload


@pytest.mark.model
def test_a_bad_schema_in_a_batch_fails_that_sequence_alone(kernel):
    """At the driver: a good and a bad sequence in one step; the bad one fails, the good one decodes
    exactly as it does alone."""
    spec = kernel.load("smollm2").spec
    drv = LlamaCppDriver(spec, DriverOptions(n_ctx=1024, max_seqs=4, max_batched_tokens=256, prefix_cache=False))
    drv.load()
    try:
        prompt = tuple(drv.tokenize_chat(ASK))

        def decode(rid: str, out, steps: int = 12) -> list[int]:
            tokens = [out.sampled[rid]]
            for step in range(steps - 1):
                out = drv.execute(SchedulerOutput(100 + step, num_scheduled_tokens={rid: 1}))
                tokens.append(out.sampled[rid])
            return tokens

        bad = NewSequence("bad", prompt, SamplingParams(max_tokens=12, temperature=0, json_schema={"type": "foo"}))
        good = NewSequence("good", prompt, SamplingParams(max_tokens=12, temperature=0))
        out = drv.execute(SchedulerOutput(1, new=(bad, good),
                                          num_scheduled_tokens={"bad": len(prompt), "good": len(prompt)}))
        assert set(out.failed) == {"bad"} and '"type": "foo"' in out.failed["bad"], out.failed
        assert "good" in out.sampled and drv.stats()["active_sequences"] == 1  # the bad one took no slot
        together = decode("good", out)
        drv.execute(SchedulerOutput(200, released=("good", "bad")))
        alone = NewSequence("alone", prompt, SamplingParams(max_tokens=12, temperature=0))
        alone = decode("alone", drv.execute(SchedulerOutput(201, new=(alone,),
                                                            num_scheduled_tokens={"alone": len(prompt)})))
        assert together == alone and drv.decode(alone).strip()
    finally:
        drv.unload()


@pytest.mark.model
def test_a_schema_failing_inside_a_step_fails_its_request_only_without_a_reload(kernel, monkeypatch):
    """At the engine: should a bad schema get past submit, its request fails alone and the driver is
    not reloaded; requests submitted with it finish normally."""
    monkeypatch.setattr(LlamaCppDriver, "check_json_schema", classmethod(lambda cls, schema: None))
    engine = next(e for e in kernel.engines() if e["model"] == "smollm2" and e["driver"] == "llamacpp")
    goods = [kernel.submit(messages=ASK, max_tokens=12, temperature=0, driver="llamacpp") for _ in range(2)]
    bad = kernel.submit(messages=ASK, max_tokens=12, temperature=0, driver="llamacpp", json_schema={"type": "foo"})
    goods.append(kernel.submit(messages=ASK, max_tokens=12, temperature=0, driver="llamacpp"))
    with pytest.raises(RequestFailedError, match='"type": "foo"'):
        bad.result(120)
    assert all("Paris" in h.result(120).text for h in goods)
    after = next(e for e in kernel.engines() if e["model"] == "smollm2" and e["driver"] == "llamacpp")
    assert after["failures"] == engine["failures"] and kernel.ps() == []


# -- over HTTP: the hostile reviewer's two requests --------------------------------------------------

KEY = "hardening-key"


@pytest.mark.model
@pytest.mark.cli
def test_unsupported_and_huge_schemas_get_a_400_and_the_server_keeps_serving(tmp_path):
    proc, base = start_server(tmp_path, "--api-key", KEY)
    try:
        h = {"Authorization": f"Bearer {KEY}"}

        def chat(**extra) -> httpx.Response:
            body = {"model": "smollm2", "messages": ASK, "max_tokens": 16, "temperature": 0, **extra}
            return httpx.post(f"{base}/v1/chat/completions", headers=h, json=body, timeout=120)

        def schema_format(schema: dict) -> dict:
            return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

        tool = {"type": "function", "function": {"name": "note", "parameters": {
            "type": "object", "properties": {"text": {"type": "string", "maxLength": 200000}}}}}
        for extra, names in [({"response_format": schema_format({"type": "foo"})}, '"type": "foo"'),
                             ({"response_format": schema_format({"type": "string", "maxLength": 200000})},
                              "maxLength"),
                             ({"tools": [tool], "tool_choice": "required"}, "maxLength")]:
            r = chat(**extra)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == "json_schema", error
            assert names in error["message"], error
        ok = chat()
        assert ok.status_code == 200 and "Paris" in ok.json()["choices"][0]["message"]["content"]
        place = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"]}
        ok = chat(response_format=schema_format(place), max_tokens=40)
        assert ok.status_code == 200 and "city" in json.loads(ok.json()["choices"][0]["message"]["content"])
        assert httpx.get(f"{base}/llmos/ps", headers=h).json() == []
    finally:
        proc.terminate()
        proc.wait(30)


# -- remote nodes that stream garbage -----------------------------------------------------------------

GOOD = {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}
#: the reply of the fake node to a chat whose last message names the script: an HTTP status, or the
#: SSE data items it streams before it ends the response (a str goes out as it is)
SCRIPTS: dict[str, object] = {
    "null choice first": [{"choices": [None]}],
    "null choice": [GOOD, {"choices": [None]}],
    "not JSON": [GOOD, '{"choices": ['],
    "not an object": [GOOD, [1, 2]],
    "choices not a list": [GOOD, {"choices": "Hi"}],
    "delta not an object": [GOOD, {"choices": [{"delta": "Hi"}]}],
    "content not text": [GOOD, {"choices": [{"delta": {"content": 5}}]}],
    "no choices": [GOOD, {"id": "chunk-2"}],
    "error chunk": [GOOD, {"error": {"message": "out of memory"}}],
    "cut off": [GOOD],
    "HTTP 500": 500,
    "ok": [GOOD, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, "[DONE]"],
}


class _FakeNode(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(200, "application/json", {"object": "list", "data": [{"id": "fake"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        script = SCRIPTS[body["messages"][-1]["content"]]
        if isinstance(script, int):
            self._reply(script, "application/json", {"error": {"message": "the node broke"}})
            return
        items = [item if isinstance(item, str) else json.dumps(item) for item in script]
        self._reply(200, "text/event-stream", "".join(f"data: {item}\n\n" for item in items))

    def _reply(self, status: int, kind: str, payload: object) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def fake_node():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeNode)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "ok"])
def test_a_node_streaming_garbage_fails_its_request_naming_the_node_and_frees_the_slot(fake_node, tmp_path, script):
    models = {"cluster": {"nodes": [fake_node], "remote_model": "fake", "max_concurrency": 1, "timeout": 10}}
    with llmos.boot(Config.load(tmp_path, models=models), load_entrypoints=False) as kernel:
        handle = kernel.submit(messages=[{"role": "user", "content": script}], model="cluster", max_tokens=20)
        with pytest.raises(RequestFailedError, match=re.escape(fake_node)):
            handle.result(30)  # a bound on a hang, not a speed: the old code never ended these

        def node() -> dict:
            [engine] = kernel.engines()
            return engine["nodes"][0]

        wait_for(lambda: node()["in_flight"] == 0, timeout=10, msg=node)
        assert kernel.ps() == []
        # the node's one slot serves again once its cool-down after the failure is over
        wait_for(lambda: node()["healthy"], timeout=70, msg=node)
        reply = kernel.chat([{"role": "user", "content": "ok"}], model="cluster", max_tokens=20)
        assert reply.text == "Hi" and node()["in_flight"] == 0
