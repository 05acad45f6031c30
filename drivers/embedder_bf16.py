"""The bfloat16 backend of the memfs embedder: all-MiniLM-L6-v2 on torch in bf16, traced once and
frozen, run on length-bucketed batches. For CPUs that do bf16 arithmetic natively (AVX512-BF16 or AMX):
there a bf16 matmul does twice the work of an fp32 one per instruction, and the model is compute-bound.

Boundaries: the same model directory, tokenizer, chunking and pooling as the other backends (mean over
the real tokens in fp32, then L2); only the transformer runs in bf16. On first use the model is traced
(torch.jit, eager attention) on the first batch and frozen; the trace holds no shape of that batch
(tests/test_embedder_bf16.py checks it against the untraced bf16 model on other shapes). Chosen with
`embedder_backend = "bf16"`; `make_embedder` refuses it where the CPU lacks native bf16 (emulated bf16
is slower than fp32). "auto" runs bulk ingest on it where it is offered (drivers/embedder_auto.py).

Measured against the torch backend on CPython's pydoc topics (docs/memfs.md): cosine of the same text
>= 0.9999, top-5 overlap 0.988 on 50 fixed queries; ~1.7x the fp32 ONNX graph's chunks/s on 2 Zen 4
cores. torch's OpenMP threads spin briefly after a batch (~10 ms of CPU per call measured); with
llama.cpp decoding in the same process, an import on this backend still took less from the decode than
one on ONNX (drivers/embedder_auto.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from .embedder import BatchedEncoder

#: texts per forward pass (measured on 2 cores with ~120-token chunks: 4 and 8 alike, 1 slower)
BF16_BATCH_SIZE = 4
_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX-BF16; read from Linux's
    cpuinfo flags: elsewhere False, and the backend is not offered)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _CPU_FLAGS)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' notes while loading and tracing (config keys it ignores, such as `loss_type`) are
    not the user's to act on: errors only, then the verbosity as it was."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


class Bf16Embedder(BatchedEncoder):
    """all-MiniLM-L6-v2 in bf16 on torch: `dim`, `chunk`, `count_tokens` and `embed` as the others."""

    name = "all-minilm-l6-v2"
    backend = "bf16"
    batch_size = BF16_BATCH_SIZE

    def __init__(self, model_path: str | None = None) -> None:
        self.model_path = model_path
        self._model = None
        self._traced = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import torch
                from transformers import AutoModel
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                source = self._source()
                _ = self.shape  # a model this backend can't run is refused before loading it
                with _quiet_transformers():
                    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
                self._model = model.to(torch.bfloat16)
            return self._model

    def _encode(self, input_ids: np.ndarray, mask: np.ndarray, options: dict) -> np.ndarray:
        """The last hidden states (fp32) of one padded batch; `options["traced"] = False` runs the
        untraced bf16 model (for checking the trace)."""
        import torch

        model = self._load()  # loaded once; also when called before `embed` (a subclass, a test)
        ids, attention = torch.from_numpy(input_ids), torch.from_numpy(mask)
        with torch.inference_mode():
            if not options.get("traced", True):
                return model(input_ids=ids, attention_mask=attention).last_hidden_state.float().numpy()
            with self._lock:
                if self._traced is None:
                    with warnings.catch_warnings(), _quiet_transformers():
                        warnings.simplefilter("ignore")  # the tracer's notes on shape checks (tested on other shapes)
                        self._traced = torch.jit.freeze(torch.jit.trace(model, (ids, attention), strict=False))
            out = self._traced(ids, attention)
            hidden = out["last_hidden_state"] if isinstance(out, dict) else out[0]
            return hidden.float().numpy()
