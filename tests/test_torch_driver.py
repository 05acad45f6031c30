"""The torch/transformers driver against the real model (SmolLM2 GGUF, dequantized and cached)."""

from __future__ import annotations

import time

import pytest

import llmos

from .util import cancel_mid_stream

pytestmark = pytest.mark.model

QUESTIONS = [
    "What is the capital of France?", "Name a primary colour.", "What is 2 plus 2?",
    "Say hello in Spanish.", "What animal says moo?", "What is the opposite of hot?",
]


@pytest.fixture(scope="module")
def torch_kernel(kernel):
    kernel.load("smollm2", driver="torch")
    return kernel


def ask(kernel, q, **kw):
    kw.setdefault("max_tokens", 20)
    kw.setdefault("temperature", 0)  # greedy: these tests compare texts
    return kernel.chat([{"role": "user", "content": q}], driver="torch", **kw)


def test_greedy_answer(torch_kernel):
    a, b = ask(torch_kernel, QUESTIONS[0]), ask(torch_kernel, QUESTIONS[0])
    assert "Paris" in a.text and a.token_ids == b.token_ids


def test_continuous_batching_matches_running_alone(torch_kernel):
    alone = [ask(torch_kernel, q).token_ids for q in QUESTIONS]
    handles = [torch_kernel.submit(messages=[{"role": "user", "content": q}], max_tokens=20, driver="torch",
                                   temperature=0) for q in QUESTIONS]
    assert [h.result(120).token_ids for h in handles] == alone


def test_requests_join_and_leave_mid_flight(torch_kernel):
    ref = [ask(torch_kernel, q, max_tokens=n).token_ids for q, n in zip(QUESTIONS[:4], (30, 5, 30, 12))]
    first = torch_kernel.submit(messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=30, driver="torch",
                                temperature=0)
    while first.request.metrics.output_tokens < 4 and not first.done:
        time.sleep(0.005)
    late = [torch_kernel.submit(messages=[{"role": "user", "content": q}], max_tokens=n, driver="torch",
                                temperature=0) for q, n in zip(QUESTIONS[1:4], (5, 30, 12))]
    assert [h.result(120).token_ids for h in [first] + late] == ref


def test_cancel_frees_rows(torch_kernel):
    driver = torch_kernel.load("smollm2", driver="torch").driver
    cancel_mid_stream(torch_kernel, driver, "Write a long essay about rivers.", driver="torch")
    assert driver.stats()["batch_rows"] == 0


def test_a_seed_reproduces_a_sampled_text_computed_the_same_way():
    """As on llama.cpp (tests/test_llamacpp_driver.py): a kernel of its own without prefix reuse, so both
    prompts are computed the same way whatever earlier tests left cached."""
    with llmos.boot(load_entrypoints=False, prefix_cache=False) as k:
        k.load("smollm2", driver="torch")
        story = dict(temperature=0.8, top_k=40, top_p=0.9)
        a, b, other = (ask(k, "Tell me a story.", seed=seed, **story) for seed in (3, 3, 4))
    assert a.text == b.text and a.token_ids == b.token_ids
    assert other.text != a.text


def test_stop_sequences(torch_kernel):
    full = ask(torch_kernel, "Count from one to ten, separated by commas.", max_tokens=40).text
    cut = full.strip()[3:6]
    stopped = ask(torch_kernel, "Count from one to ten, separated by commas.", max_tokens=40, stop=[cut])
    assert stopped.finish_reason == "stop" and cut not in stopped.text


def test_same_model_on_both_drivers_and_dequantized_cache(torch_kernel, llmos_home, monkeypatch):
    from transformers import AutoModelForCausalLM

    both = {e["driver"] for e in torch_kernel.engines() if e["model"] == "smollm2"}
    assert both == {"llamacpp", "torch"}
    [cached] = list((llmos_home / "cache" / "torch").glob("SmolLM2*/model.safetensors"))
    written = cached.stat().st_mtime_ns
    loads = []  # every model transformers builds: a GGUF file (dequantizing) or a directory
    load = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda source, *a, **kw: loads.append((str(source), kw.get("gguf_file"))) or load(source, *a, **kw))
    with llmos.boot(load_entrypoints=False) as again:   # loads from the cache this time
        assert "Paris" in ask(again, QUESTIONS[0]).text
    assert loads == [(str(cached.parent), None)]  # the cached safetensors, not the GGUF file again
    assert cached.stat().st_mtime_ns == written


def test_cuda_path():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: the CUDA path runs where one is present")
    from llmos.drivers.torch_loading import pick_device

    assert pick_device()[0] == "cuda"
    with llmos.boot(load_entrypoints=False) as k:
        c = k.chat([{"role": "user", "content": QUESTIONS[0]}], driver="torch", max_tokens=12)
        assert c.text and k.engines()[0]["device"] == "cuda"


def test_prompt_logprobs_equal_a_plain_forward_pass_over_chunks(torch_kernel):
    """Scored prompts on the torch driver: exactly the log-softmax of one transformers forward pass, also
    when the prompt is prefilled in several chunks (max_batched_tokens 512) beside another request."""
    import torch
    from transformers import AutoModelForCausalLM

    driver = torch_kernel.load("smollm2", driver="torch").driver
    text = " ".join(["Water boils at one hundred degrees Celsius at sea level."] * 70)  # ~900 tokens
    other = torch_kernel.submit("Tell me about tea.", driver="torch", max_tokens=40, temperature=0)
    got = torch_kernel.generate(text, driver="torch", max_tokens=1, temperature=0, prompt_logprobs=True)
    other.result()
    ids = driver.tokenize(text)
    assert len(ids) > 600 and len(got.prompt_logprobs) == len(ids) - 1
    model = AutoModelForCausalLM.from_pretrained(driver.model_dir, dtype=torch.float32)
    with torch.no_grad():
        lps = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    reference = lps[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert torch.allclose(torch.tensor(got.prompt_logprobs, dtype=torch.float64), reference.double(), atol=1e-3)
