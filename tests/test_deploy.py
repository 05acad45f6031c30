"""From a module to a servable model: `llmos mod merge` folds a real PEFT LoRA into SmolLM2's weights
(PEFT's merge, written as an F16 GGUF) and the merged model gives the module's logits; `llmos quantize`
makes a GGUF with llama.cpp's quantizer that loads and answers; what cannot be done is refused with
the reason, and nothing existing is ever overwritten."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.models.local import ModelExistsError
from llmos.kernel.modules.merge import merge_module
from llmos.kernel.models.quantize import quantize_model
from llmos.plugins.evaluation.run import Target, evaluate

from .lora import make_lora, torch_model_dir
from .util import run_llmos

pytestmark = pytest.mark.model
TEXT = ("The library opens at nine in the morning and closes at six in the evening. Visitors may borrow up to "
        "five books at a time, and each loan lasts three weeks.")


@pytest.fixture(scope="module")
def merged(kernel, llmos_home, tmp_path_factory):
    """A LoRA module on q/v/up projections, installed and merged into `deploy-merged`."""
    src = torch_model_dir(kernel, llmos_home)
    name = "deploy-lora"
    if name not in kernel.module_store.names():
        kernel.install_module(str(make_lora(src, tmp_path_factory.mktemp(name), seed=5,
                                            targets=["q_proj", "v_proj", "up_proj"], scale=0.4)),
                              name=name, base="smollm2")
    if "deploy-merged" not in kernel.registry.names():
        merge_module(kernel.module_store, kernel.registry, llmos_home / "cache", name, "deploy-merged")
    return name, "deploy-merged"


def logprobs(kernel, **target) -> np.ndarray:
    return np.array(kernel.generate(TEXT, max_tokens=1, temperature=0, prompt_logprobs=True, **target).prompt_logprobs)


def test_the_merged_model_gives_the_modules_logits(kernel, merged):
    module, model = merged
    spec = kernel.registry.resolve(model)
    assert spec.source == "local" and spec.options["made_from"]["module"] == module
    # torch: PEFT's module on the float32 base vs the merged F16 weights: only F16 rounding apart
    with_module = logprobs(kernel, adapter=module, driver="torch")
    folded = logprobs(kernel, model=model, driver="torch")
    base = logprobs(kernel, driver="torch")
    assert np.abs(with_module - folded).max() < 0.1 and abs(with_module.mean() - folded.mean()) < 0.01
    assert np.abs(with_module - base).max() > 10 * np.abs(with_module - folded).max()  # the module does change them
    # llama.cpp runs the merged model too, within its batch-shape noise of torch (tests/greedy.py)
    on_llamacpp = logprobs(kernel, model=model, driver="llamacpp")
    assert np.abs(on_llamacpp - folded).max() < 1.0 and abs(on_llamacpp.mean() - folded.mean()) < 0.05


def test_quantize_writes_a_gguf_that_loads_and_answers(kernel, merged, llmos_home):
    _, model = merged
    spec = quantize_model(kernel.registry, model, "q8_0", None, threads=2) \
        if f"{model}-q8_0" not in kernel.registry.names() else kernel.registry.resolve(f"{model}-q8_0")
    assert spec.name == f"{model}-q8_0" and spec.size_bytes < 0.6 * kernel.registry.resolve(model).size_bytes
    answer = kernel.chat([{"role": "user", "content": "What is the capital of France?"}], model=spec.name,
                         max_tokens=16, temperature=0).text
    assert "paris" in answer.lower()
    from pydoc_data.topics import topics

    rows = [{"text": topics[name][:1500]} for name in ("assignment", "class", "for", "if", "while")]  # ~1,500 tokens
    f16 = evaluate(kernel, Target(model), "perplexity", rows).score
    q8 = evaluate(kernel, Target(spec.name), "perplexity", rows).score
    assert abs(q8 / f16 - 1) < 0.02  # 8-bit weights: perplexity within 2% of F16 (measured: 0.3%)


def test_what_cannot_be_made_is_refused_and_nothing_is_overwritten(kernel, merged, llmos_home, tmp_path):
    module, model = merged
    path = kernel.registry.resolve(model).path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelExistsError, match="never overwrites"):
        merge_module(kernel.module_store, kernel.registry, llmos_home / "cache", module, model)
    with pytest.raises(ModelExistsError):
        quantize_model(kernel.registry, model, "q4_0", "smollm2", threads=2)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with pytest.raises(InvalidRequestError, match="already quantized"):
        quantize_model(kernel.registry, "smollm2", "q4_0", "smollm2-again", threads=2)
    with pytest.raises(InvalidRequestError, match="type must be one of q8_0, q4_k_m, q4_0"):
        quantize_model(kernel.registry, model, "q3_k", None, threads=2)
    with pytest.raises(InvalidRequestError, match="a model name is 1-64"):
        merge_module(kernel.module_store, kernel.registry, llmos_home / "cache", module, "../escape")
    assert not list(kernel.registry.local.root.glob(".*"))  # no temporary directory left behind


def test_a_prefix_module_cannot_be_merged(kernel, llmos_home, tmp_path):
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    src = torch_model_dir(kernel, llmos_home)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(src),
                          PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))
    peft.save_pretrained(tmp_path / "prefix")
    if "deploy-prefix" not in kernel.module_store.names():
        kernel.install_module(str(tmp_path / "prefix"), name="deploy-prefix", base="smollm2")
    with pytest.raises(InvalidRequestError, match="prefix tuning: it adds virtual tokens"):
        merge_module(kernel.module_store, kernel.registry, llmos_home / "cache", "deploy-prefix", "never-made")
    assert "never-made" not in kernel.registry.names()


@pytest.mark.cli
def test_cli_merge_and_quantize_with_json(kernel, merged, llmos_home):
    """The CLI over the same calls (the merge itself: the fixture's; a second one would only repeat it)."""
    module, model = merged
    env = {"LLMOS_HOME": str(llmos_home)}
    r = run_llmos("quantize", model, "--type", "q4_k_m", "--as", "deploy-cli-q4", "--json", env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["model"] == "deploy-cli-q4" and made["made_by"] == "quantize" and made["source"] == model
    assert "deploy-cli-q4" in kernel.registry.names()  # a running kernel sees it at once
    again = run_llmos("mod", "merge", module, "--as", model, env=env, timeout=120)
    assert again.returncode == 2 and f"a model named '{model}' exists" in again.stderr
    missing = run_llmos("mod", "merge", "no-such-module", "--as", "x1", "--json", env=env, timeout=120)
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["code"] == "adapter_not_found"
