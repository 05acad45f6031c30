"""Bad input, table-driven, over every entry point: the Python API, HTTP and the CLI.

Each case must end in a typed `LlmosError` (Python), a 4xx with the OpenAI error shape (HTTP) or exit
status 2 with a one-line message (CLI), and must leave stored data as it was."""

from __future__ import annotations

import json

import httpx
import pytest

import llmos
from llmos.kernel.errors import (ConfigError, InvalidRequestError, LlmosError, PromptTooLongError, StorageError,
                                 UnknownAdapterError, UnknownModelError)
from llmos.kernel.memfs.paths import normalize
from llmos.kernel.modules.store import ModuleStore
from llmos.kernel.models.registry import ModelRegistry
from llmos.kernel.proc.tool_calling import Function, InvalidToolCall, parse_arguments, parse_reply
from llmos.plugins.finetune.data import FinetuneDataError, load_jsonl
from llmos.plugins.manager import PluginManager

from .util import run_llmos, start_server

HUGE = "word " * 200_000
ASK = [{"role": "user", "content": "hi"}]

# (id, call(kernel), expected error type, the parameter it must name or None)
API_CASES = [
    ("empty prompt", lambda k: k.submit(""), InvalidRequestError, "prompt"),
    ("blank prompt", lambda k: k.submit("   \n"), InvalidRequestError, "prompt"),
    ("prompt not a string", lambda k: k.submit(42), InvalidRequestError, "prompt"),
    ("huge prompt", lambda k: k.submit(HUGE), PromptTooLongError, None),
    ("invalid UTF-8 prompt", lambda k: k.submit("bad \udcff byte"), InvalidRequestError, "prompt"),
    ("invalid UTF-8 message", lambda k: k.submit(messages=[{"role": "user", "content": "x\ud800"}]),
     InvalidRequestError, "messages"),
    ("empty messages", lambda k: k.submit(messages=[]), InvalidRequestError, "messages"),
    ("bad role", lambda k: k.submit(messages=[{"role": "wizard", "content": "x"}]), InvalidRequestError, "messages"),
    ("both prompt and messages", lambda k: k.submit("x", messages=ASK), InvalidRequestError, "prompt"),
    ("temperature < 0", lambda k: k.submit("x", temperature=-1), InvalidRequestError, "temperature"),
    ("temperature > 2", lambda k: k.submit("x", temperature=2.5), InvalidRequestError, "temperature"),
    ("temperature NaN", lambda k: k.submit("x", temperature=float("nan")), InvalidRequestError, "temperature"),
    ("top_p 0", lambda k: k.submit("x", top_p=0), InvalidRequestError, "top_p"),
    ("seed past int64", lambda k: k.submit("x", seed=2**64), InvalidRequestError, "seed"),
    ("negative seed", lambda k: k.submit("x", seed=-1), InvalidRequestError, "seed"),
    ("top_p > 1", lambda k: k.submit("x", top_p=1.5), InvalidRequestError, "top_p"),
    ("max_tokens 0", lambda k: k.submit("x", max_tokens=0), InvalidRequestError, "max_tokens"),
    ("max_tokens huge", lambda k: k.submit("x", max_tokens=10**9), InvalidRequestError, "max_tokens"),
    ("max_tokens string", lambda k: k.submit("x", max_tokens="5"), InvalidRequestError, "max_tokens"),
    ("unknown sampling key", lambda k: k.submit("x", temprature=1), InvalidRequestError, "temprature"),
    ("bad priority", lambda k: k.submit("x", priority="urgent"), InvalidRequestError, "priority"),
    ("negative timeout", lambda k: k.submit("x", timeout=-1), InvalidRequestError, "timeout"),
    ("unknown model", lambda k: k.submit("x", model="no-such-model"), UnknownModelError, None),
    ("unknown driver", lambda k: k.submit("x", driver="warp"), InvalidRequestError, "driver"),
    ("unknown adapter", lambda k: k.submit("x", adapter="no-such-adapter"), UnknownAdapterError, None),
    ("model path that is not GGUF", lambda k: k.submit("x", model=__file__), LlmosError, None),
    ("unknown tool", lambda k: k.call_tool("no_such_tool", {}), LlmosError, None),
    ("tool args of the wrong type", lambda k: k.call_tool("calculator", {"expression": 5}), InvalidRequestError,
     "expression"),
    ("unknown task", lambda k: k.run_task("no_such_task", {}), LlmosError, None),
    ("spawn with unknown tools", lambda k: k.spawn("x", tools=["nope"]), InvalidRequestError, "tools"),
    ("spawn with zero steps", lambda k: k.spawn("x", max_steps=0), InvalidRequestError, "max_steps"),
    ("unknown session", lambda k: k.sessions.get("no-such-session"), LookupError, None),
    ("bad session message", lambda k: k.sessions.open("s").append({"role": "user", "content": 1}),
     InvalidRequestError, "content"),
]

MEM_PATHS = ["..", "/a/../../etc/passwd", "relative/path", "/a//b", "/with\x00nul", "/" + "n" * 300,
             "/" + "a/" * 3000, "/ctl\x07char", "", "/./a"]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api_refuses_with_a_typed_error(fake_kernel, case):
    _name, call, error, param = case
    with pytest.raises(error) as info:
        call(fake_kernel)
    assert isinstance(info.value, LlmosError) and str(info.value)
    if param is not None:
        assert info.value.param == param
    assert fake_kernel.ps() == []  # nothing was queued


@pytest.mark.parametrize("path", MEM_PATHS, ids=repr)
def test_memfs_paths_never_escape_the_volume(path):
    with pytest.raises(InvalidRequestError) as info:
        normalize(path)
    assert info.value.code == "invalid_path"


def test_model_tool_call_json_and_finetune_data(tmp_path):
    for reply in ("{bad", "[]", '{"name": 3}', '{"arguments": {}}', ""):
        with pytest.raises(InvalidToolCall):
            parse_reply(reply)
    fn = Function("add", "", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    for reply in ('{"a": "x"}', "{}", '{"a": 1', "null"):
        with pytest.raises(InvalidToolCall):
            parse_arguments(reply, fn)
    for content in ("{not json\n", "", "\n\n", '{"messages": "x"}\n', b"\xff\xfe\x00garbage"):
        f = tmp_path / "d.jsonl"
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(FinetuneDataError):
            load_jsonl(f)


def test_adapters_with_a_wrong_base_or_truncated_files(tmp_path):
    store = ModuleStore(tmp_path / "home", ModelRegistry(tmp_path / "home"))
    bad = tmp_path / "lora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"],
                                                         "base_model_name_or_path": "smollm2"}))
    (bad / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated
    with pytest.raises(LlmosError, match="safetensors"):
        store.install(str(bad), name="broken", base="smollm2")
    with pytest.raises(LlmosError):
        store.install(str(bad), name="broken", base="no-such-base")
    assert store.list() == []


def test_corrupt_config_sessions_and_index_files(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmos.toml").write_text("[kernel\nmax_running = ")
    with pytest.raises(ConfigError, match="llmos.toml is not valid TOML"):
        llmos.boot(home=home)
    (home / "llmos.toml").write_text("[kernel]\nmax_running = -3\n")
    with pytest.raises(ConfigError, match="max_running"):
        llmos.boot(home=home)
    (home / "llmos.toml").write_text("[redaction]\nenabled = true\npatterns = ['(unclosed']\n")
    with pytest.raises(ConfigError, match="redaction"):
        llmos.boot(home=home, plugins=PluginManager(load_entrypoints=False))
    (home / "llmos.toml").unlink()
    (home / "sessions.db").write_bytes(b"this is not a database" * 100)
    with llmos.boot(home=home, load_entrypoints=False) as k:
        with pytest.raises(StorageError, match="move it aside"):
            _ = k.sessions
    assert (home / "sessions.db").read_bytes().startswith(b"this is not a database")  # left for the user


# -- HTTP -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, base = start_server(tmp_path_factory.mktemp("badsrv"))
    yield base
    proc.terminate()
    proc.wait(30)


CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
# (id, method, path, body (dict, or raw bytes), expected status, the param the error must name or None)
HTTP_CASES = [
    ("empty prompt", "POST", COMP, {"model": "smollm2", "prompt": ""}, 400, "prompt"),
    ("huge prompt", "POST", COMP, {"model": "smollm2", "prompt": "word " * 9000}, 413, None),
    ("invalid UTF-8 body", "POST", COMP, b'{"model": "smollm2", "prompt": "\xff\xfe"}', 400, None),
    ("not JSON", "POST", CHAT, b"{model: smollm2", 400, None),
    ("empty messages", "POST", CHAT, {"model": "smollm2", "messages": []}, 400, "messages"),
    ("temperature 9", "POST", CHAT, {"model": "smollm2", "messages": ASK, "temperature": 9}, 400, "temperature"),
    ("top_p -1", "POST", CHAT, {"model": "smollm2", "messages": ASK, "top_p": -1}, 400, "top_p"),
    ("max_tokens text", "POST", CHAT, {"model": "smollm2", "messages": ASK, "max_tokens": "x"}, 400, None),
    ("max_tokens 0", "POST", CHAT, {"model": "smollm2", "messages": ASK, "max_tokens": 0}, 400, "max_tokens"),
    ("n 3", "POST", CHAT, {"model": "smollm2", "messages": ASK, "n": 3}, 400, None),
    ("seed past int64", "POST", CHAT, {"model": "smollm2", "messages": ASK, "seed": 2**64}, 400, "seed"),
    ("logprobs", "POST", CHAT, {"model": "smollm2", "messages": ASK, "logprobs": True}, 400, "logprobs"),
    ("logit_bias", "POST", COMP, {"model": "smollm2", "prompt": "x", "logit_bias": {"1": 5}}, 400, "logit_bias"),
    ("presence_penalty", "POST", CHAT, {"model": "smollm2", "messages": ASK, "presence_penalty": 1}, 400,
     "presence_penalty"),
    ("body not an object", "POST", CHAT, [1, 2], 400, None),
    ("unknown model", "POST", CHAT, {"model": "no-such-model", "messages": ASK}, 404, "model"),
    ("unknown adapter", "POST", CHAT, {"model": "smollm2:no-such-adapter", "messages": ASK}, 404, "model"),
    ("bad response_format", "POST", CHAT, {"model": "smollm2", "messages": ASK,
                                           "response_format": {"type": "yaml"}}, 400, "response_format"),
    ("bad tools", "POST", CHAT, {"model": "smollm2", "messages": ASK, "tools": [{"type": "rocket"}]}, 400, "tools"),
    ("embeddings of nothing", "POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": []}, 400, None),
    ("memfs traversal", "GET", "/llmos/mem/cat?path=/../../etc/passwd", None, 400, "path"),
    ("memfs NUL", "GET", "/llmos/mem/cat?path=/a%00b", None, 400, "path"),
    ("memfs relative", "PUT", "/llmos/mem/write", {"path": "etc/passwd", "text": "x"}, 400, "path"),
    ("memfs long name", "PUT", "/llmos/mem/write", {"path": "/" + "n" * 300, "text": "x"}, 400, "path"),
    ("kill unknown", "POST", "/llmos/kill/req-none", None, 404, None),
    ("module load without an admin key", "POST", "/llmos/modules/nope/load", None, 403, None),
    ("unknown session", "GET", "/llmos/sessions/nope", None, 404, None),
    ("agent with no goal", "POST", "/llmos/agents", {"goal": " "}, 400, "goal"),
]


@pytest.mark.model
@pytest.mark.cli
@pytest.mark.parametrize("case", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_refuses_with_a_4xx_in_the_openai_shape(server, case):
    _name, method, path, body, status, param = case
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else \
        ({"json": body} if body is not None else {})
    r = httpx.request(method, server + path, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    assert httpx.get(f"{server}/llmos/ps").json() == []


@pytest.mark.model
@pytest.mark.cli
def test_http_accepts_unsupported_openai_fields_at_their_off_values(server):
    """What OpenAI clients send by default (penalties 0, logprobs false, no bias) is not an error."""
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 2, "presence_penalty": 0, "frequency_penalty": 0.0,
            "logprobs": False, "top_logprobs": None, "logit_bias": {}, "seed": 2**63 - 1}
    r = httpx.post(server + CHAT, json=body, timeout=60)
    assert r.status_code == 200, r.text


# -- CLI --------------------------------------------------------------------------------------------

CLI_CASES = [
    ("empty prompt", ["run", ""], "prompt is empty"),
    ("temperature", ["run", "-t", "5", "hi"], "temperature"),
    ("unknown model", ["run", "-m", "no-such-model", "hi"], "no-such-model"),
    ("memfs traversal", ["mem", "cat", "/../etc/passwd"], "segment"),
    ("bad finetune data", ["finetune", "--data", "/nonexistent.jsonl", "--out", "x"], "nonexistent"),
    ("unknown session", ["sessions", "show", "nope"], "llmos sessions ls"),
]


@pytest.mark.cli
@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_exit_2_and_one_line(case):
    _name, args, needle = case
    r = run_llmos(*args, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_nothing_in_llmos_unpickles():
    """Adapters load from safetensors/GGUF and indexes through FAISS: no code path uses pickle or torch.load."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for folder in ("kernel", "drivers", "plugins", "shell"):
        for f in (root / folder).rglob("*.py"):
            text = f.read_text()
            if re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)|torch\.load\(|np\.load\(.*allow_pickle=True",
                         text, re.M):
                offenders.append(str(f.relative_to(root)))
    assert offenders == []
