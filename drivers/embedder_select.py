"""Choosing the memfs embedder's backend (`embedder_backend`: auto, onnx, torch, bf16): drivers/embedder.py
(sentence-transformers on torch), drivers/embedder_onnx.py (the same model on ONNX Runtime),
drivers/embedder_bf16.py (torch in bf16, for CPUs with native bf16) or, for "auto" where bf16 is
native, drivers/embedder_auto.py (ONNX, and bf16 for bulk ingest). Backends are imported only once
chosen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmos.kernel.config import check_embedder_backend
from llmos.kernel.errors import ConfigError


def _installed(*packages: str) -> bool:
    """Whether all `packages` are installed (found, not imported)."""
    return all(importlib.util.find_spec(name) is not None for name in packages)


def onnx_available() -> bool:
    """Whether the ONNX backend can run here (onnxruntime and onnx are installed; found, not imported:
    importing onnx costs ~0.6 s and only the first export needs it)."""
    return _installed("onnx", "onnxruntime")


def bulk_bf16_available() -> bool:
    """Whether "auto" also runs bulk ingest on bf16 here (drivers/embedder_auto.py): a CPU with bf16
    instructions, and torch and transformers installed (found, not imported)."""
    from .embedder_bf16 import native_bf16

    return native_bf16() and _installed("torch", "transformers")


def resolve_backend(backend: str = "auto") -> str:
    """The backend `backend` names on this machine ("auto": onnx when installed, else torch); raises
    ConfigError when it can't run here (with onnx, "auto" may also embed bulk ingest on bf16:
    `bulk_bf16_available`). Cheap (no model loaded): the kernel calls it at boot, so a
    setting this machine can't honour stops the boot, not the first write to memory."""
    check_embedder_backend(backend)
    if backend == "auto":
        return "onnx" if onnx_available() else "torch"
    if backend == "bf16":
        from .embedder_bf16 import native_bf16

        if not native_bf16():
            raise ConfigError("embedder_backend = 'bf16' needs a CPU with bf16 instructions (AVX512-BF16 or AMX); "
                              "this one would emulate them, slower than fp32: use 'onnx' or 'auto'")
    if backend == "onnx" and not onnx_available():
        raise ConfigError("embedder_backend = 'onnx' needs onnxruntime and onnx: pip install 'llmos[memory]', "
                          "or set embedder_backend = 'torch'")
    return backend


def make_embedder(backend: str = "auto", *, cache_dir: str | Path | None = None, model_path: str | None = None):
    """The embedder for `backend` (one of kernel/config.py EMBEDDER_BACKENDS, see `resolve_backend`).
    `cache_dir` holds the ONNX export (default: $LLMOS_HOME/cache/embedder)."""
    backend_name, backend = backend, resolve_backend(backend)
    if backend == "torch":
        from .embedder import SentenceEmbedder

        return SentenceEmbedder(model_path)
    if backend == "bf16":
        from .embedder_bf16 import Bf16Embedder

        return Bf16Embedder(model_path)
    from .embedder_onnx import OnnxEmbedder

    if cache_dir is None:
        from llmos.kernel.config import default_home

        cache_dir = default_home() / "cache" / "embedder"
    fast = OnnxEmbedder(model_path, cache_dir=cache_dir)
    if backend_name == "auto" and bulk_bf16_available():
        from .embedder_auto import AutoEmbedder
        from .embedder_bf16 import Bf16Embedder

        return AutoEmbedder(fast, lambda: Bf16Embedder(model_path))
    return fast
