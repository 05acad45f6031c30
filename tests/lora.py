"""Making real LoRA adapters for tests: peft's get_peft_model with fixed, non-zero weights."""

from __future__ import annotations

from pathlib import Path


def torch_model_dir(kernel, home: Path) -> Path:
    """The dequantized SmolLM2 directory the torch driver caches under LLMOS_HOME."""
    src = kernel.load("smollm2", driver="torch").driver.model_dir
    assert src.is_relative_to(home / "cache" / "torch")
    return src


def make_lora(src: Path, out: Path, *, seed: int, targets: list[str], scale: float, rank: int = 8,
              **config) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(src),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                  init_lora_weights=False, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(scale)  # strong enough to change the greedy answer
    model.save_pretrained(out)
    return out
