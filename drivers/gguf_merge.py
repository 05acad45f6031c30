"""Fold a PEFT module into its base model's weights and write the result as a GGUF (`llmos mod merge`).

1. PEFT merges the module into the base model's Hugging Face weights (the GGUF dequantized once by the
   torch driver's loader) in float32: `merge_and_unload`, whatever the method (LoRA, AdaLoRA, IA3);
   what changed is each targeted weight's delta;
2. every tensor of the base GGUF is dequantized (gguf-py) and written again, 2-D weights as F16 and the
   rest as F32, with the deltas added where the module changed a weight (llama's q/k rows permuted for
   llama.cpp's RoPE layout, as the LoRA export does: gguf_lora.py); the metadata is copied, the file
   type set to F16.

The result is a full-precision model that loads on llama.cpp and torch with no adapter cost, and that
`llmos quantize` (gguf_quantize.py) makes small again. Uses torch, transformers, peft and gguf (the
[torch] extra), imported lazily.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from .gguf_lora import HF_TO_GGUF, ExportError, base_shape_info, permute_for_rope

Progress = Callable[[str, float], None]
_LAYER = re.compile(r"layers\.(\d+)\.(" + "|".join(re.escape(k) for k in HF_TO_GGUF) + r")$")
#: gguf's file type "mostly F16"
MOSTLY_F16 = 1


class MergeError(ExportError):
    code = "merge_failed"


def module_deltas(hf_dir: Path, peft_dir: Path, progress: Progress) -> dict[str, tuple[str, Any]]:
    """{GGUF tensor name: (Hugging Face projection, float32 numpy delta in Hugging Face's layout)} of every
    weight the module changes."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft_type = str(json.loads((peft_dir / "adapter_config.json").read_text()).get("peft_type", "")).upper()
    if peft_type not in ("LORA", "ADALORA", "IA3"):
        raise MergeError(f"a {peft_type.lower() or 'unknown'} module cannot be folded into weights (prefix tuning "
                         "adds virtual tokens, not weight changes): merge LoRA, AdaLoRA or IA3 modules")
    progress("loading the base model", 0.0)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(model, str(peft_dir))
    targets = {name.removeprefix("base_model.model.model."): mod.base_layer.weight.detach().clone()
               for name, mod in peft.named_modules() if hasattr(mod, "base_layer") and ".layers." in name}
    if not targets:
        raise MergeError(f"{peft_dir} changes no layer weight llama.cpp knows")
    progress("merging (PEFT)", 0.2)
    merged = dict(peft.merge_and_unload().named_modules())
    deltas = {}
    for name, before in targets.items():
        m = _LAYER.search(name)
        if m is None:
            raise MergeError(f"cannot map {name} to a llama.cpp tensor (llmos merges attention and MLP projections)")
        layer, proj = m.groups()
        deltas[f"blk.{layer}.{HF_TO_GGUF[proj]}.weight"] = (proj, (merged[f"model.{name}"].weight.detach() - before).numpy())
    return deltas


def merge_to_gguf(base_gguf: Path, hf_dir: Path, peft_dir: Path, out: Path,
                  progress: Progress = lambda _what, _fraction: None) -> Path:
    """Write `out`: the base GGUF with the PEFT module in `peft_dir` folded in, as F16."""
    import gguf
    import numpy as np

    deltas = module_deltas(hf_dir, peft_dir, progress)
    arch, n_head, n_head_kv = base_shape_info(base_gguf)
    reader = gguf.GGUFReader(str(base_gguf))
    writer = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():  # the metadata, as gguf-py's gguf_new_metadata copies it
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = MOSTLY_F16 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for i, tensor in enumerate(reader.tensors):
        progress("writing tensors", 0.4 + 0.6 * i / len(reader.tensors))
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if tensor.name in deltas:
            proj, delta = deltas.pop(tensor.name)
            if arch == "llama" and proj in ("self_attn.q_proj", "self_attn.k_proj"):
                delta = permute_for_rope(delta, n_head if proj.endswith("q_proj") else n_head_kv)
            if delta.shape != data.shape:
                raise MergeError(f"{tensor.name}: the module's delta is {delta.shape}, the model's weight {data.shape}")
            data = data + delta
        writer.add_tensor(tensor.name, np.ascontiguousarray(data.astype(np.float16) if data.ndim == 2 else data))
    if deltas:
        raise MergeError(f"the base model has no tensor {sorted(deltas)[0]}: is this module for another model?")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    progress("done", 1.0)
    return out
