"""`embedder_backend = "auto"` on a CPU with bf16 instructions: ONNX Runtime for every call, and the
bf16 backend for bulk ingest once it has loaded.

Boundaries: wraps two embedders of the same model directory (so `chunk`, `count_tokens` and `dim` are
the ONNX one's, and the bf16 one's are the same). A call is *bulk* when it runs at BATCH priority (an
import, the index's upkeep; the kernel's queue passes `priority="batch"` only for a batch made wholly of
such jobs) with at least BULK_MIN_TEXTS texts. The first bulk call starts loading the bf16 backend on a
thread of its own and is served by ONNX; bulk calls use bf16 once it is ready (measured cold, 1,000
chunks in batches of 64: the same chunks/s as ONNX alone, the load done after ~8 s; a niced loader
starved behind ONNX's two threads for the whole import). A
load that fails is logged once and ONNX keeps serving. Queries, HTTP embeddings and small writes always
run on ONNX, so their vectors never depend on other clients' traffic, and a one-shot `llmos mem find`
never loads torch.

Why (measured on 2 Zen 4 cores, docs/memfs.md): bf16 embeds ~1.5x the chunks/s of fp32 ONNX, and with
llama.cpp decoding in the same process both did better (decode 47 vs 22 tokens/s, embedding 35 vs 20
chunks/s); but it costs ~4.5 s and ~300 MB to load (torch, the model, its trace) against ONNX's 0.4 s,
and a single query costs alike (3.5 vs 2.9 ms). The two agree to cosine >= 0.9999 with torch, so a
volume may hold vectors of both (tests/test_embedder_auto.py: bulk-written passages, ONNX queries).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from llmos.kernel.sched.request import Priority

log = logging.getLogger("llmos.memfs")

#: a BATCH-priority call with fewer texts stays on ONNX and starts no load (a few files' import)
BULK_MIN_TEXTS = 32


def _is_batch(priority) -> bool:
    try:
        return priority is not None and Priority.parse(priority) == Priority.BATCH
    except (ValueError, KeyError, TypeError):
        return False


class AutoEmbedder:
    """`dim`, `chunk`, `count_tokens` and `embed` as the other backends; `bulk_state` says where the
    bf16 backend stands ("idle", "loading", "ready", "failed")."""

    routes_bulk = True  # kernel/memfs/embedding.py tells it which batches are bulk work

    def __init__(self, fast, make_bulk) -> None:
        self.fast = fast
        self._make_bulk = make_bulk
        self._bulk = None
        self._loader: threading.Thread | None = None
        self._lock = threading.Lock()
        self.bulk_state = "idle"

    name = property(lambda self: self.fast.name)
    dim = property(lambda self: self.fast.dim)
    max_seq_length = property(lambda self: self.fast.max_seq_length)

    @property
    def backend(self) -> str:
        return "onnx+bf16" if self.bulk_state == "ready" else "onnx"

    def chunk(self, text: str):
        return self.fast.chunk(text)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.fast.count_tokens(texts)

    def embed(self, texts: list[str], batch_size: int | None = None, **options) -> np.ndarray:
        """Vectors for `texts`: on bf16 for a bulk call once it is loaded (a bulk call before that
        starts the load), else on ONNX."""
        bulk = _is_batch(options.get("priority")) and len(texts) >= BULK_MIN_TEXTS
        if bulk and self.bulk_state == "ready":
            return self._bulk.embed(texts, batch_size, **options)
        if bulk and self.bulk_state == "idle":
            self.start_bulk()
        return self.fast.embed(texts, batch_size, **options)

    def start_bulk(self, wait: bool = False) -> str:
        """Start loading the bf16 backend (once); with `wait`, until it is ready or failed. Its state."""
        with self._lock:
            if self._loader is None:
                self.bulk_state = "loading"
                self._loader = threading.Thread(target=self._load_bulk, name="llmos-embed-bf16-load", daemon=True)
                self._loader.start()
        if wait:
            self._loader.join()
        return self.bulk_state

    def _load_bulk(self) -> None:
        try:
            bulk = self._make_bulk()
            bulk.embed(["warm up", "the trace"])  # loads torch and the model, traces and freezes it
        except Exception as exc:  # noqa: BLE001 - ONNX keeps serving; the reason goes to the log
            log.warning("the bf16 embedder for bulk ingest did not load (%s); ONNX serves all calls", exc)
            self.bulk_state = "failed"
            return
        self._bulk = bulk
        self.bulk_state = "ready"
        log.info("bulk ingest now embeds on bf16")
