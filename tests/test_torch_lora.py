"""Gathered mixed-adapter LoRA (drivers/torch_lora.py) against PEFT's own per-row path, on SmolLM2."""

from __future__ import annotations

import pytest

from .lora import make_lora, torch_model_dir

pytestmark = pytest.mark.model

BASE = "__base__"
ADAPTERS = (("a", 1, ["q_proj", "v_proj"], 4), ("b", 2, ["k_proj", "o_proj", "up_proj"], 8),
            ("c", 3, ["q_proj", "down_proj"], 16))  # ranks and layers differ: the stacks pad and zero-fill


@pytest.fixture(scope="module")
def peft_model(kernel, llmos_home, tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src = torch_model_dir(kernel, llmos_home)
    paths = {name: make_lora(src, tmp_path_factory.mktemp(name), seed=seed, targets=targets, scale=2.0, rank=rank)
             for name, seed, targets, rank in ADAPTERS}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), str(paths["a"]), adapter_name="a")
    for name in ("b", "c"):
        model.load_adapter(str(paths[name]), adapter_name=name)
    return model.eval(), src


def _logits(model, names, gathered=None):
    import torch

    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 30, 198]] * len(names))
    with torch.inference_mode():
        if gathered is None:
            return model(input_ids=ids, adapter_names=names).logits
        with gathered.apply(names):
            return model(input_ids=ids).logits


def test_a_mixed_batch_gets_the_logits_of_peft_per_row_adapters(peft_model):
    import torch

    from llmos.drivers.torch_lora import GatheredLora

    model, _src = peft_model
    gathered = GatheredLora(model, BASE)
    assert gathered.usable()
    names = [BASE, "a", "b", "c", "b", BASE, "a"]
    expected, got = _logits(model, names), _logits(model, names, gathered)
    # float32 sums in another order (B carries the scaling; bmm instead of per-adapter linears): ~1e-3 apart
    torch.testing.assert_close(got, expected, atol=5e-3, rtol=1e-3)
    for i, j in ((0, 1), (1, 2), (2, 3)):  # the adapters really change the logits
        assert (expected[i] - expected[j]).abs().max() > 0.1
    # one adapter for every row, and no adapter at all, take the short paths
    torch.testing.assert_close(_logits(model, ["c"] * 3, gathered), _logits(model, ["c"] * 3), atol=5e-3, rtol=1e-3)
    torch.testing.assert_close(_logits(model, [BASE] * 2, gathered), _logits(model, [BASE] * 2), atol=5e-3, rtol=1e-3)
    gathered.invalidate()


def test_outside_a_step_the_hooks_add_nothing_and_invalidate_removes_them(peft_model):
    import torch

    from llmos.drivers.torch_lora import GatheredLora

    model, _src = peft_model
    before = _logits(model, ["a", "b"])
    gathered = GatheredLora(model, BASE)
    _logits(model, ["a", "b"], gathered)  # builds the stacks and hooks
    assert torch.equal(_logits(model, ["a", "b"]), before)  # PEFT's own path, hooks idle: not a bit moved
    assert sum(len(m._forward_hooks) for m in model.modules()) > 0
    gathered.invalidate()
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_variants_such_as_dora_keep_pefts_own_path(kernel, llmos_home, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmos.drivers.torch_lora import GatheredLora

    src = torch_model_dir(kernel, llmos_home)
    path = make_lora(src, tmp_path / "dora", seed=4, targets=["q_proj"], scale=1.0, use_dora=True)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), str(path), adapter_name="d")
    assert not GatheredLora(model, BASE).usable()
