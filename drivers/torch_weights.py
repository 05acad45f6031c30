"""Where the torch driver's weights come from: a Hugging Face directory as it is, or a GGUF file
dequantized once by transformers and cached as safetensors under `<cache>/torch/` (later loads take a
fraction of a second). Also used by the fine-tuning plugin, which trains on the same weights.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from llmos.kernel.errors import ModelLoadError

from .base import ProgressCallback

log = logging.getLogger("llmos.torch")


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
