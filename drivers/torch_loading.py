"""Where the torch driver's weights and device come from.

`pick_device`: CUDA, then MPS, then CPU (bf16/fp16 on accelerators, fp32 on CPU), unless a model's
settings name one. `hf_model_dir`: a Hugging Face directory as is; a GGUF file dequantized once by
transformers and cached as safetensors, so later loads take a fraction of a second.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmos.kernel.errors import ModelLoadError
from llmos.kernel.models.placement import Placement

from .base import ProgressCallback

log = logging.getLogger("llmos.torch")


def pick_device(where: Placement | None = None) -> tuple[str, Any]:
    """(torch device, dtype) for a model's placement: by probe for "auto" (CUDA, then MPS, then CPU),
    else what it names; bf16 (fp16 where bf16 is missing) on accelerators, fp32 on CPU."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    available = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    device = (where or Placement()).torch_device(available)
    kind = device.split(":")[0]
    if kind == "cuda":
        index = int(device.split(":")[1]) if ":" in device else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ModelLoadError(f"the model's placement asks for {device}, but torch {torch.__version__} sees "
                                 f"{count} CUDA device(s): set device = \"cpu\" or \"auto\" in its [models.NAME] "
                                 f"table, or install a CUDA build of torch")
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        if not mps:
            raise ModelLoadError("the model's placement asks for mps, but this torch has no MPS device: set "
                                 "device = \"cpu\" or \"auto\" in its [models.NAME] table")
        return "mps", torch.float16
    return "cpu", torch.float32


def hf_model_dir(spec, cache_root: Path, report: ProgressCallback = lambda _f: None) -> Path:
    """The Hugging Face directory of a model: its own, or for a GGUF file a safetensors copy made
    once under `cache_root/torch/` (transformers dequantizes it; later loads take a fraction of a second)."""
    path = spec.path
    if spec.format == "hf":
        return path
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root / "torch" / f"{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    log.info("dequantizing %s once into %s", path, target)
    report(0.1)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for bad files
        raise ModelLoadError(f"transformers could not read the GGUF file {path}: {exc}") from exc
    report(0.6)
    model.hf_quantizer = None  # the weights are plain tensors now: save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent if target.parent.exists()
                                else _mkdir(target.parent)))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a crash never leaves a half-written cache that looks complete
    except OSError:  # another process (e.g. a second DDP rank) finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
