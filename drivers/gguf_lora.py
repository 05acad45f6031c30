"""Export a PEFT LoRA adapter (Hugging Face layout) as a GGUF LoRA that llama.cpp loads.

Tensor names follow llama.cpp's convention (`blk.N.attn_q.weight.lora_a` / `.lora_b`); the
adapter's alpha goes into `adapter.lora.alpha` so llama.cpp applies the same alpha/rank scale as
PEFT. For llama-family models, llama.cpp stores q/k projections with their rows permuted for its
RoPE layout, so `lora_b` of q_proj/k_proj is permuted the same way. Uses `gguf` and `safetensors`
(the [torch] extra); imported lazily.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmos.kernel.errors import LlmosError

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"layers\.(\d+)\.(" + "|".join(re.escape(k) for k in HF_TO_GGUF) + r")\.lora_([AB])\.weight$")


class ExportError(LlmosError):
    code = "export_failed"


def permute_for_rope(w, n_head: int):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_field(reader, key: str) -> str | int | None:
    """A scalar metadata value of a `gguf.GGUFReader`'s file (a string or an integer), None when absent."""
    import gguf

    f = reader.fields.get(key)
    if f is None:
        return None
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types and f.types[0] == gguf.GGUFValueType.STRING else int(value[0])


def base_shape_info(base_gguf: Path) -> tuple[str, int, int]:
    """(architecture, head_count, head_count_kv) from the base model's GGUF metadata."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = gguf_field(reader, "general.architecture")
    return arch, gguf_field(reader, f"{arch}.attention.head_count"), gguf_field(reader, f"{arch}.attention.head_count_kv")


def export_peft_to_gguf(peft_dir: Path, base_gguf: Path, out: Path) -> Path:
    """Write `out` (GGUF LoRA) from the PEFT adapter in `peft_dir` made for the model `base_gguf`."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ExportError(f"only LoRA adapters export to GGUF (llama.cpp loads LoRA only), not {cfg.get('peft_type')}")
    arch, n_head, n_head_kv = base_shape_info(base_gguf)
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(cfg.get("lora_alpha", cfg.get("r", 8))))
    written = 0
    for key in sorted(tensors):
        m = _KEY.search(key)
        if m is None:
            raise ExportError(f"cannot map adapter tensor {key} to a llama.cpp tensor")
        layer, proj, ab = m.groups()
        data = tensors[key].astype(np.float32)
        if ab == "B" and arch == "llama" and proj in ("self_attn.q_proj", "self_attn.k_proj"):
            data = permute_for_rope(data, n_head if proj.endswith("q_proj") else n_head_kv)
        writer.add_tensor(f"blk.{layer}.{HF_TO_GGUF[proj]}.weight.lora_{ab.lower()}", np.ascontiguousarray(data))
        written += 1
    if not written:
        raise ExportError(f"{peft_dir} holds no LoRA tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
