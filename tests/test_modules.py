"""Adapters as loadable modules: install checks, insmod/rmmod/lsmod, refcounts, mixed-adapter
batches on the torch driver, GGUF LoRA on the llama.cpp driver."""

from __future__ import annotations

import json
import time

import pytest

import llmos
from llmos.kernel.errors import RequestCancelledError, UnknownAdapterError
from llmos.kernel.modules.table import ModuleBusyError
from llmos.kernel.modules.store import BaseModelMismatchError, ModuleError, ModuleStore, check_safetensors
from llmos.kernel.models.registry import ModelRegistry

from .greedy import GreedyScorer
from .lora import make_lora, torch_model_dir

Q = [{"role": "user", "content": "What is the capital of France?"}]


def make_peft_dir(path, *, tensors=None, config=None):
    import numpy as np
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config or {"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                                 "target_modules": ["q_proj"]}))
    save_file(tensors or {"w": np.ones((64, 64), dtype=np.float32)}, str(path / "adapter_model.safetensors"))
    return path


# -- install checks (no model needed) -----------------------------------------------------------------

def test_truncated_safetensors_is_refused_naming_the_file(tmp_path):
    d = make_peft_dir(tmp_path / "a")
    f = d / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ModuleError, match="adapter_model.safetensors is truncated"):
        check_safetensors(f)
    store = ModuleStore(tmp_path / "home", ModelRegistry(tmp_path / "home"))
    with pytest.raises(ModuleError, match="truncated"):
        store.install(d, base="smollm2")
    assert store.names() == []


def test_pickle_weights_and_missing_files_are_refused(tmp_path):
    store = ModuleStore(tmp_path / "home", ModelRegistry(tmp_path / "home"))
    d = make_peft_dir(tmp_path / "p")
    (d / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModuleError, match="only safetensors"):
        store.install(d, base="smollm2")
    with pytest.raises(ModuleError, match="no adapter_config.json"):
        store.install(tmp_path, base="smollm2")
    with pytest.raises(ModuleError, match="pass --base"):
        store.install(make_peft_dir(tmp_path / "nobase"))
    with pytest.raises(ModuleError, match="not available here"):
        store.install(make_peft_dir(tmp_path / "badbase"), base="no-such-model")


def test_install_is_atomic_and_names_are_checked(tmp_path):
    store = ModuleStore(tmp_path / "home", ModelRegistry(tmp_path / "home"))
    m = store.install(make_peft_dir(tmp_path / "ok"), name="ok", base="smollm2")
    assert m.formats == ["peft"] and m.rank == 4 and m.base_model == "smollm2" and len(m.base_identity) == 32
    assert store.names() == ["ok"] and store.get("ok") == m
    with pytest.raises(ModuleError, match="installed already"):
        store.install(tmp_path / "ok", name="ok", base="smollm2")
    with pytest.raises(llmos.InvalidRequestError, match="module name"):
        store.install(tmp_path / "ok", name="../evil", base="smollm2")
    with pytest.raises(UnknownAdapterError, match="ok"):
        store.get("nope")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no staging leftovers


# -- real adapters --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peft_adapters(kernel, llmos_home, tmp_path_factory):
    """Two LoRA adapters with fixed non-zero weights for SmolLM2, made with peft in the test."""
    src = torch_model_dir(kernel, llmos_home)
    out = {}
    for name, seed, targets, scale in (("alpha", 1, ["q_proj", "v_proj"], 0.3),
                                       ("beta", 2, ["k_proj", "o_proj", "up_proj"], 4.0)):
        path = make_lora(src, tmp_path_factory.mktemp(name), seed=seed, targets=targets, scale=scale)
        out[name] = kernel.install_module(str(path), name=name, base="smollm2")
    return out


def chat(kernel, **kw):
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)  # greedy: these tests compare outputs
    return kernel.chat(Q, **kw)


@pytest.mark.model
def test_adapter_changes_output_and_unmounting_restores_it(kernel, peft_adapters):
    base = chat(kernel, driver="torch").token_ids
    with_a = chat(kernel, adapter="alpha").token_ids
    assert with_a != base
    assert any(m["name"] == "alpha" and m["driver"] == "torch" and m["memory_bytes"] > 0 for m in kernel.lsmod())
    kernel.rmmod("alpha")
    assert not kernel.lsmod() or all(m["name"] != "alpha" for m in kernel.lsmod())
    assert chat(kernel, driver="torch").token_ids == base
    assert chat(kernel, adapter="alpha").token_ids == with_a  # reloaded on demand


@pytest.mark.model
def test_mixed_adapter_batch_matches_each_alone(kernel, peft_adapters):
    names = [None, "alpha", "beta", None, "beta", "alpha"]
    alone = [chat(kernel, adapter=a, driver="torch").token_ids for a in names]
    handles = [kernel.submit(messages=Q, adapter=a, driver="torch", max_tokens=16, temperature=0) for a in names]
    assert [h.result(120).token_ids for h in handles] == alone
    assert len({tuple(t) for t in alone}) == 3  # base, alpha and beta really differ


@pytest.mark.model
def test_rmmod_in_use_is_refused_unless_forced(kernel, peft_adapters):
    kernel.insmod("beta")
    h = kernel.submit(messages=Q, adapter="beta", max_tokens=300, ignore_eos=True)
    while h.request.metrics.output_tokens < 2:
        time.sleep(0.005)
    with pytest.raises(ModuleBusyError, match="used by 1 request"):
        kernel.rmmod("beta")
    assert [m["use_count"] for m in kernel.lsmod() if m["name"] == "beta"] == [1]
    assert kernel.rmmod("beta", force=True) == [h.id]
    with pytest.raises(RequestCancelledError):
        h.result(10)


@pytest.mark.model
def test_mismatched_base_is_refused_before_anything_runs(kernel, peft_adapters, tmp_path):
    with pytest.raises(BaseModelMismatchError, match="trained on smollm2, not gemma3-270m"):
        kernel.submit(messages=Q, adapter="alpha", model="gemma3-270m")
    src = kernel.module_store.weights_path(kernel.module_store.get("alpha"), "peft")
    kernel.install_module(str(src), name="for-gemma", base="gemma3-270m")
    with pytest.raises(BaseModelMismatchError):
        kernel.submit(messages=Q, adapter="for-gemma", model="smollm2")
    with pytest.raises(llmos.InvalidRequestError, match="not on the llamacpp driver"):
        kernel.submit(messages=Q, adapter="alpha", driver="llamacpp") if "gguf" not in \
            kernel.module_store.get("alpha").formats else pytest.skip("alpha was exported already")


@pytest.mark.model
def test_gguf_lora_on_llamacpp(kernel, peft_adapters, scorer):
    base = chat(kernel, driver="llamacpp").token_ids
    manifest = kernel.export_module("beta")
    assert manifest.formats == ["peft", "gguf"]
    beta_scorer = GreedyScorer(str(kernel.load("smollm2").spec.path),
                               lora_path=str(kernel.module_store.weights_path(manifest, "gguf")))
    with_b = chat(kernel, adapter="beta", driver="llamacpp")
    assert with_b.token_ids != base
    # requests of different adapters are grouped into separate steps, and each gets its own result
    names = [None, "beta", None, "beta"]
    handles = [kernel.submit(messages=Q, adapter=a, driver="llamacpp", max_tokens=16, temperature=0)
               for a in names]
    results = [h.result(120).token_ids for h in handles]
    # each is the greedy answer of its own weights (base or base+beta), up to batch-shape noise: a step
    # that applied the wrong adapter would put tokens far below the top (tests/greedy.py)
    prompt = handles[0].request.prompt_token_ids
    try:
        for name, tokens in zip(names, results):
            (beta_scorer if name else scorer).assert_greedy(prompt, tokens, f"adapter {name}")
        with pytest.raises(AssertionError, match="not a greedy choice"):  # and the two really differ
            scorer.assert_greedy(prompt, with_b.token_ids)
    finally:
        beta_scorer.close()
    assert any(m["name"] == "beta" and m["driver"] == "llamacpp" for m in kernel.lsmod())


@pytest.mark.model
def test_modules_beyond_the_budget_are_evicted_lru(peft_adapters, llmos_home):
    with llmos.boot(load_entrypoints=False, max_loaded_modules=1) as k:
        chat(k, adapter="alpha")
        chat(k, adapter="beta", driver="torch")
        assert [m["name"] for m in k.lsmod()] == ["beta"]
        chat(k, adapter="alpha")
        assert [m["name"] for m in k.lsmod()] == ["alpha"]
