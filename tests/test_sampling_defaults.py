"""Default sampling per model: a request that leaves temperature, top_p, top_k, min_p or
repetition_penalty unset gets its model's defaults (its `[models.NAME]` table, else the GGUF's
`general.sampling.*` metadata, else Ollama's 0.8 / 0.9 / 40 / 1.1); what a request sets wins, and
temperature 0 is plain greedy decoding. Both drivers apply the repetition penalty the same way."""

from __future__ import annotations

import ctypes
import json

import httpx
import pytest

import llmos
from llmos.kernel.config import Config
from llmos.kernel.errors import ConfigError
from llmos.kernel.sched.interface import NewSequence
from llmos.kernel.models.defaults import file_sampling, read_gguf_metadata
from llmos.kernel.models.registry import ModelRegistry, remote_spec
from llmos.kernel.sched.request import BUILTIN_SAMPLING, SamplingParams

from .fakes import FakeDriver
from .test_kernel_fake import plugin_manager
from .util import run_llmos, start_server

MODEL = {"temperature": 0.5, "top_p": 0.7, "top_k": 50, "min_p": 0.1, "repetition_penalty": 1.3}
TIPS = [{"role": "user", "content": "Give me three tips for learning Python."}]
LOGITS = [3.0, 2.5, -1.0, 0.5, -2.0]
HISTORY = [0, 2, 2]  # tokens 0 and 2 were seen: penalized once each, however often they occur
PENALIZED = [2.0, 2.5, -1.5, 0.5, -2.0]  # CTRL: a positive logit divided by 1.5, a negative one multiplied


def fields(p: SamplingParams) -> dict:
    return {k: getattr(p, k) for k in BUILTIN_SAMPLING}


def write_gguf(path, **sampling) -> str:
    """A GGUF file (no tensors) written by gguf-py, with its own sampling keys and a string array."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])  # skipped over by the reader
    for key, value in sampling.items():
        getattr(w, f"add_sampling_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return str(path)


# -- resolution (no model) -------------------------------------------------------------------------

def test_builtin_defaults_are_ollamas():
    assert BUILTIN_SAMPLING == {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.0,
                                "repetition_penalty": 1.1}
    assert fields(SamplingParams().with_defaults()) == BUILTIN_SAMPLING


def test_unset_fields_take_the_models_defaults_and_set_fields_win():
    assert fields(SamplingParams().with_defaults(MODEL)) == MODEL
    p = SamplingParams(top_k=5, temperature=1.2, max_tokens=7).with_defaults(MODEL)
    assert fields(p) == {**MODEL, "top_k": 5, "temperature": 1.2} and p.max_tokens == 7


def test_a_request_for_temperature_zero_is_plain_greedy():
    p = SamplingParams(temperature=0).with_defaults(MODEL)
    assert p.greedy and fields(p) == {"temperature": 0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                      "repetition_penalty": 1.0}
    assert SamplingParams(temperature=0, repetition_penalty=1.2).with_defaults(MODEL).repetition_penalty == 1.2
    # a model whose own default is temperature 0 keeps its other defaults (its table said so)
    assert fields(SamplingParams().with_defaults({**MODEL, "temperature": 0.0}))["repetition_penalty"] == 1.3


def test_gguf_sampling_metadata_is_read(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", temp=0.6, top_p=0.95, top_k=20, min_p=0.05, penalty_repeat=1.2)
    assert read_gguf_metadata(path, "general.sampling.")["general.sampling.top_k"] == 20
    assert file_sampling("gguf", path) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.05,
                                           "repetition_penalty": 1.2}
    data = open(path, "rb").read()
    for name, content in (("cut.gguf", data[:40]), ("zeros.gguf", b"GGUF" + b"\0" * 32), ("text.gguf", b"hello")):
        (tmp_path / name).write_bytes(content)
        assert file_sampling("gguf", tmp_path / name) == {}, name
    out_of_range = write_gguf(tmp_path / "odd.gguf", temp=9.0, top_k=-1)
    assert file_sampling("gguf", out_of_range) == {"top_k": 0}  # 9 is ignored; llama.cpp's -1 means off


def test_defaults_come_from_the_table_then_the_file_then_built_in(tmp_path):
    tuned = write_gguf(tmp_path / "tuned.gguf", temp=0.6, top_k=20, penalty_repeat=1.2)
    bare = write_gguf(tmp_path / "bare.gguf")
    models = {"tuned": {"path": tuned, "temperature": 0.3}, "bare": {"path": bare}}
    with llmos.boot(home=tmp_path / "home", plugins=plugin_manager(FakeDriver), models=models) as k:
        rows = {r["name"]: r["sampling"] for r in k.models_info()}
        want = {"temperature": 0.3, "top_p": 0.9, "top_k": 20, "min_p": 0.0, "repetition_penalty": 1.2}
        assert rows["tuned"] == want and rows["bare"] == BUILTIN_SAMPLING

        def sent(model, **kw):  # what the kernel queued for the driver
            h = k.submit("hi", model=model, driver="fake", max_tokens=2, **kw)
            h.result(10)
            return fields(h.request.sampling)

        assert sent("tuned") == want
        assert sent("tuned", top_k=3, temperature=None) == {**want, "top_k": 3}
        assert sent(tuned) == {**want, "temperature": 0.6}  # the file by path: no table
        assert sent("bare") == BUILTIN_SAMPLING
        assert sent("tuned", temperature=0)["repetition_penalty"] == 1.0


def test_a_builtin_models_table_sets_its_defaults_without_a_path(tmp_path):
    registry = ModelRegistry(tmp_path, {"smollm2": {"temperature": 0.2, "repetition_penalty": 1.0}})
    spec = registry.resolve("smollm2")
    assert spec.source == "builtin" and registry.names().count("smollm2") == 1
    assert spec.sampling_defaults() == {**BUILTIN_SAMPLING, "temperature": 0.2, "repetition_penalty": 1.0}


@pytest.mark.parametrize("table, key", [({"temperature": 7}, "temperature"), ({"top_k": -2}, "top_k"),
                                        ({"repetition_penalty": "high"}, "repetition_penalty")])
def test_bad_sampling_in_a_model_table_is_a_config_error(tmp_path, table, key):
    path = write_gguf(tmp_path / "m.gguf")
    for name, models in (("mine", {"mine": {"path": path, **table}}), ("smollm2", {"smollm2": table})):
        with pytest.raises(ConfigError, match=rf"\[models\.{name}\] in llmos.toml: {key}"):
            ModelRegistry(tmp_path, models).list()


def test_the_remote_driver_forwards_what_is_set_and_leaves_the_rest_to_the_node():
    from llmos.drivers.remote import _payload

    spec = remote_spec("cluster", {"nodes": ["http://127.0.0.1:9"], "top_k": 7, "repetition_penalty": 1.3})
    assert spec.sampling_defaults() == {"top_k": 7, "repetition_penalty": 1.3}
    params = SamplingParams(max_tokens=5, min_p=0.05).with_defaults(spec.sampling_defaults())
    body = _payload(NewSequence("r", (1,), params), True, [{"role": "user", "content": "hi"}])
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "max_tokens": 5, "top_k": 7, "min_p": 0.05, "repetition_penalty": 1.3, "repeat_penalty": 1.3}


# -- the repetition penalty in both drivers ----------------------------------------------------------

def test_torch_repetition_penalty_is_transformers_ctrl_penalty():
    torch = pytest.importorskip("torch")
    from transformers import RepetitionPenaltyLogitsProcessor

    from llmos.drivers.torch_sampling import _penalize, make_generator, sample_rows

    logits = torch.tensor(LOGITS)
    ours = _penalize(logits, HISTORY, 1.5)
    theirs = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([HISTORY]), logits[None].clone())[0]
    assert torch.equal(ours, theirs) and ours.tolist() == PENALIZED
    greedy = SamplingParams(temperature=0).with_defaults()
    penalized = SamplingParams(temperature=0, repetition_penalty=1.5).with_defaults()
    sampled = SamplingParams(temperature=0.8, top_k=1, repetition_penalty=1.5, seed=0).with_defaults()
    gen = make_generator(sampled, torch.device("cpu"))
    assert sample_rows(logits[None].repeat(3, 1), [greedy, penalized, sampled], [HISTORY] * 3,
                       [None, None, gen]) == [0, 1, 1]


def test_a_set_seed_never_becomes_llamacpps_random_seed():
    from llmos.drivers.llamacpp_lib import C, llama_seed

    assert llama_seed(None) == C.LLAMA_DEFAULT_SEED  # unset: random
    seeds = [0, 7, C.LLAMA_DEFAULT_SEED, 2**32, 2**63 - 1]
    assert all(0 <= llama_seed(s) < C.LLAMA_DEFAULT_SEED for s in seeds)  # set: reproducible, 32-bit
    assert llama_seed(7) == 7 and llama_seed(C.LLAMA_DEFAULT_SEED) != llama_seed(None)


@pytest.mark.model
def test_llamacpp_sampler_chain_applies_the_same_penalty(kernel):
    from llama_cpp import llama_cpp as C

    from llmos.drivers.llamacpp_lib import Sampler

    model = kernel.load("smollm2").driver._model

    def run(params: SamplingParams) -> tuple[int, list[float]]:
        data = (C.llama_token_data * len(LOGITS))(*[C.llama_token_data(i, x, 0.0) for i, x in enumerate(LOGITS)])
        array = C.llama_token_data_array(ctypes.cast(data, ctypes.POINTER(C.llama_token_data)), len(LOGITS), -1,
                                         False)
        sampler = Sampler(params.with_defaults(), HISTORY, model=model)
        try:
            C.llama_sampler_apply(sampler.chain, ctypes.byref(array))
        finally:
            sampler.free()
        return data[array.selected].id, sorted((d.id, d.logit) for d in data)

    assert run(SamplingParams(temperature=0))[0] == 0
    picked, logits = run(SamplingParams(temperature=0, repetition_penalty=1.5))
    assert picked == 1 and [x for _i, x in logits] == PENALIZED
    assert run(SamplingParams(temperature=0.8, top_k=1, repetition_penalty=1.5, seed=0))[0] == 1


# -- the real model ----------------------------------------------------------------------------------

def longest_repeat(tokens: list[int], max_n: int = 16) -> int:
    """The most times any n-gram (n <= max_n) occurs back to back: "1.1.1.1" is "1." four times."""
    best = 1
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - 2 * n + 1):
            reps = 1
            while tokens[start + reps * n:start + (reps + 1) * n] == tokens[start:start + n]:
                reps += 1
            best = max(best, reps)
    return best


def test_longest_repeat_counts_back_to_back_ngrams():
    assert longest_repeat([1, 2, 1, 2, 1, 2, 3]) == 3 and longest_repeat([5, 5, 5, 5]) == 4
    assert longest_repeat([1, 2, 3, 1, 2, 3]) == 2 and longest_repeat([1, 2, 3]) == 1


@pytest.mark.model
def test_default_sampling_does_not_loop_where_greedy_does(kernel):
    # the check below tells the reported loop ("1. **1.1.1.1.1.1...", what greedy decoding wrote here) from a
    # reply: measured on that text's own tokens (greedy's exact text varies with the KV cache's numerics)
    loop = kernel.load("smollm2", driver="llamacpp").driver.tokenize("1. **" + "1." * 40)
    assert longest_repeat(loop) > 8
    sampled = [kernel.submit(messages=TIPS, driver="llamacpp", seed=seed, max_tokens=160) for seed in (1, 2)]
    for h in sampled:
        reply = h.result(300)
        assert h.request.sampling == SamplingParams(max_tokens=160, seed=h.request.sampling.seed, **BUILTIN_SAMPLING)
        assert reply.text.strip() and longest_repeat(reply.token_ids) <= 4, reply.text


@pytest.mark.model
def test_temperature_zero_decodes_greedily_every_time(kernel, scorer):
    # one after the other: the second reuses the first's prompt KV, so its numbers come from another
    # batch shape; both must still take the top token at every step (tests/greedy.py: up to the measured
    # batch-shape noise), and they agree but where two tokens are nearly tied
    a = kernel.submit(messages=TIPS, driver="llamacpp", temperature=0, max_tokens=24)
    a.result(120)
    b = kernel.submit(messages=TIPS, driver="llamacpp", temperature=0, max_tokens=24)
    prompt = a.request.prompt_token_ids
    for h in (a, b):
        assert h.result(120).text
        scorer.assert_greedy(prompt, h.result().token_ids)
    scorer.assert_same_or_near_tie(prompt, b.result().token_ids, a.result().token_ids)
    assert fields(a.request.sampling)["repetition_penalty"] == 1.0 and a.request.sampling.top_k == 0


@pytest.mark.model
@pytest.mark.cli
def test_cli_and_http_apply_the_models_defaults(tmp_path):
    home = tmp_path / "home"  # start_server's home too
    home.mkdir()
    (home / "llmos.toml").write_text("[models.smollm2]\ntemperature = 0.0\nrepetition_penalty = 3.0\n")
    env = {"LLMOS_HOME": str(home)}
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    listed = {m["name"]: m for m in json.loads(run_llmos("models", "--json", env=env).stdout)}
    assert listed["smollm2"]["sampling"] == {**BUILTIN_SAMPLING, "temperature": 0.0, "repetition_penalty": 3.0}
    cli = run_llmos("run", "--json", "-n", "24", ask[0]["content"], env=env)
    assert cli.returncode == 0, cli.stderr
    proc, base = start_server(tmp_path)
    try:
        r = httpx.post(f"{base}/v1/chat/completions", json={"model": "smollm2", "messages": ask, "max_tokens": 24},
                       timeout=120)
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(30)
    with llmos.boot(Config.load(home), load_entrypoints=False) as k:
        table = k.chat(ask, max_tokens=24, temperature=0, repetition_penalty=3.0).text
        plain = k.chat(ask, max_tokens=24, temperature=0).text
    assert table != plain  # the table's penalty changes this answer, so the comparison below tells
    assert json.loads(cli.stdout)["text"] == table == r.json()["choices"][0]["message"]["content"]
