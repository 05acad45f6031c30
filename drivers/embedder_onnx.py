"""The ONNX Runtime backend of the memfs embedder: all-MiniLM-L6-v2 exported once to ONNX, run by
onnxruntime with length-bucketed batches.

Boundaries: the model's transformer is exported (torch.onnx, TorchScript tracer, eager attention) and
fused by onnxruntime's BERT optimizer into `<cache_dir>/<name>-<fingerprint>/model.onnx` on first use;
the fingerprint covers the source weights and EXPORT_VERSION, and a manifest records the file's sha256,
so a changed model re-exports and a damaged file (a torn copy, bit rot) is re-exported, never used.
Both are written atomically (temporary file, fsync, rename), so a crash mid-export leaves the old state.
Later constructions need no torch: the tokenizer (tokenizers, from the model's tokenizer.json) and
onnxruntime. Pooling (mean over the attention mask) and L2 normalization are done here, as
the model's sentence-transformers modules do; only that module stack (Transformer, mean Pooling,
Normalize) is accepted.

Measured against the torch backend (docs/memfs.md): fp32 agrees (cosine >= 0.99999, top-5 overlap 1.0
on the pydoc topics); dynamic int8 quantization lost agreement (top-5 overlap 0.62-0.92), so it is not
offered. onnxruntime's intra-op pool is its own (no OpenMP) and is told not to spin when idle, so it does
not take the cores from the torch LLM driver between batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from llmos.kernel.errors import ModelLoadError
from llmos.kernel.lib.atomic import atomic_write_text, fsync_dir, fsync_file

from .embedder import BatchedEncoder

log = logging.getLogger("llmos.embedder")

#: part of the cache key: bump when the export recipe changes, so old exports are not reused
EXPORT_VERSION = 1
OPSET = 17
#: texts per onnxruntime run: on 2 CPU cores with ~160-token chunks, 4 gave 73 chunks/s, 1: 61, 8: 67,
#: 32: 58, 64: 51 (larger batches only add memory traffic there; the length buckets keep padding small)
ONNX_BATCH_SIZE = 4
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def export_onnx(model_path: Path, target: Path) -> None:
    """Export the transformer of `model_path` to `target` (fused fp32 ONNX), atomically: the file appears
    whole or not at all. Needs torch and transformers (only here)."""
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()
    cfg = model.config

    class Encoder(torch.nn.Module):  # positional inputs, one output: the token embeddings
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    example = (torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]]),
               torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), torch.zeros(2, 4, dtype=torch.long))
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "token_embeddings")}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=".export.", suffix=".onnx", dir=target.parent)
    os.close(fd)
    fused = raw + ".fused"
    try:
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code (checked by tests)
            torch.onnx.export(Encoder(model), example, raw, input_names=list(_INPUTS),
                              output_names=["token_embeddings"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        opt = optimizer.optimize_model(raw, model_type="bert", num_heads=cfg.num_attention_heads,
                                       hidden_size=cfg.hidden_size, opt_level=1)
        opt.save_model_to_file(fused)
        fsync_file(fused)
        os.replace(fused, target)
        fsync_dir(target.parent)
    finally:
        for leftover in (raw, fused):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


class OnnxEmbedder(BatchedEncoder):
    """all-MiniLM-L6-v2 on onnxruntime: `dim`, `chunk`, `count_tokens` and `embed` as SentenceEmbedder."""

    name = "all-minilm-l6-v2"
    backend = "onnx"
    batch_size = ONNX_BATCH_SIZE

    def __init__(self, model_path: str | None = None, *, cache_dir: str | Path, threads: int | None = None) -> None:
        self.model_path = model_path
        self.cache_dir = Path(cache_dir)
        self.threads = threads
        self._session = None
        self.export_s: float | None = None  # seconds the last export took (None: the cache served)
        self._lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------------------

    def cached_model(self) -> Path:
        """Where this model's export lives: keyed by the source weights and the export recipe."""
        source = self._source()
        key = hashlib.sha256(json.dumps({
            "export": EXPORT_VERSION, "opset": OPSET,
            "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(source.iterdir()) if p.is_file()},
        }, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.name}-{key}" / "model.onnx"

    def _ensure_export(self) -> Path:
        """The cached export, checked against its manifest; exported (again) when missing or damaged."""
        target = self.cached_model()
        manifest = target.with_name("manifest.json")
        try:
            recorded = json.loads(manifest.read_text())
            if recorded.get("sha256") == _sha256(target):
                return target
            log.warning("embedder: %s does not match its manifest; exporting it again", target)
        except (OSError, ValueError):
            pass  # not exported yet, or the manifest is unreadable
        started = time.perf_counter()
        log.info("embedder: exporting %s to ONNX in %s (once)", self.name, target.parent)
        try:
            export_onnx(self._source(), target)
        except ImportError as exc:
            raise ModelLoadError(f"exporting the embedder to ONNX needs torch and transformers ({exc}): "
                                 f"pip install 'llmos[memory]', or set embedder_backend = 'torch'") from exc
        atomic_write_text(manifest, json.dumps({"sha256": _sha256(target), "bytes": target.stat().st_size,
                                                "source": str(self._source()), "export": EXPORT_VERSION}))
        self.export_s = time.perf_counter() - started
        return target

    def _load(self):
        with self._lock:
            if self._session is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import onnxruntime as ort

                from llmos.kernel.config import available_cores

                _ = self.shape  # a model this backend can't run is refused before its export
                path = self._ensure_export()
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads or available_cores()
                opts.inter_op_num_threads = 1
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle pool sleeps
                try:
                    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                    raise ModelLoadError(f"onnxruntime cannot load {path} ({exc}); delete {path.parent} "
                                         f"to export again") from exc
                self._inputs = [i.name for i in session.get_inputs()]
                self._session = session
            return self._session

    def _encode(self, input_ids: np.ndarray, mask: np.ndarray, options: dict) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return self._session.run(None, {name: feed[name] for name in self._inputs})[0]
