"""PEFT methods llmos trains: LoRA, AdaLoRA, IA3 and prefix tuning, with defaults for decoder LMs."""

from __future__ import annotations

from llmos.kernel.errors import InvalidRequestError

METHODS = ("lora", "adalora", "ia3", "prefix")
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def peft_config(method: str, rank: int, total_steps: int):
    """The peft config object for `method` with rank (or virtual tokens, for prefix) `rank`."""
    from peft import AdaLoraConfig, IA3Config, LoraConfig, PrefixTuningConfig, TaskType

    if method == "lora":
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                          target_modules=ATTENTION)
    if method == "adalora":
        return AdaLoraConfig(task_type=TaskType.CAUSAL_LM, init_r=rank + rank // 2, target_r=rank,
                             lora_alpha=2 * rank, target_modules=ATTENTION, total_step=max(total_steps, 2),
                             tinit=0, tfinal=0, deltaT=1)
    if method == "ia3":
        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=["k_proj", "v_proj", "down_proj"],
                         feedforward_modules=["down_proj"])
    if method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=rank)
    raise InvalidRequestError(f"method must be one of {', '.join(METHODS)}, got {method!r}", param="method")
