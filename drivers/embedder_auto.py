"""`embedder_backend = "auto"` on a CPU with bf16 instructions: ONNX Runtime for every call, and the
bf16 backend for bulk ingest once a large import has loaded it.

Boundaries: wraps two embedders of the same model directory (so `chunk`, `count_tokens` and `dim` are
the ONNX one's, and the bf16 one's are the same). An import of at least BULK_WORTH_TEXTS files says so
first (`expect_bulk`, called by `MemFS.import_dir` through the kernel's queue) and that starts loading
the bf16 backend on a thread of its own while ONNX serves; once it is ready, *bulk* calls run on it:
texts memfs embeds to store (`bulk=True`, set by `batch_prepare`: imports, multi-file writes; the
kernel's queue passes it only for a batch made wholly of such jobs) of at least BULK_MIN_TEXTS. A load
or a batch that fails is logged and ONNX serves from then on. Searches and HTTP embeddings always run
on ONNX, whatever their priority (a batch-class tenant's too), so vectors handed to a client never
depend on other clients' traffic, and a one-shot `llmos mem find` never loads torch. The loader
is not a daemon thread: torch abandoned mid-load aborted the interpreter at exit ("terminate called
without an active exception", measured); a process that ends while it loads lets it stop first (at
exit transformers refuses new work, so the load ends within a second, quietly).

Why (measured on 2 Zen 4 cores, docs/memfs.md): bf16 embeds ~1.5x the chunks/s of fp32 ONNX, and with
llama.cpp decoding in the same process both did better (decode 47 vs 22 tokens/s, embedding 35 vs 20
chunks/s); but it costs ~4.5 s and ~300 MB to load (torch, the model, its trace) against ONNX's 0.4 s,
and a single query costs alike (3.5 vs 2.9 ms). Loading while ONNX works (~8 s on 2 busy cores; a
niced loader starved for the whole import) pays off from ~900 chunks on (1,000 chunks cold ran at ONNX's
own speed), hence the import-size gate. The two agree to cosine >= 0.9999 with torch, so a volume may
hold vectors of both (tests/test_embedder_auto.py: bulk-written passages, ONNX queries).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger("llmos.memfs")

#: an import of at least this many files loads the bulk backend (smaller ones finish sooner on ONNX)
BULK_WORTH_TEXTS = 1000
#: a bulk call with fewer texts stays on ONNX even once bf16 is ready (a few files' write)
BULK_MIN_TEXTS = 32


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

    @property
    def backend(self) -> str:
        return "onnx+bf16" if self.bulk_state == "ready" else "onnx"

    def chunk(self, text: str):
        return self.fast.chunk(text)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.fast.count_tokens(texts)

    def expect_bulk(self, texts: int) -> None:
        """An import of about `texts` texts is starting: from BULK_WORTH_TEXTS on, load bf16 meanwhile."""
        if texts >= BULK_WORTH_TEXTS:
            self.start_bulk()

    def embed(self, texts: list[str], batch_size: int | None = None, **options) -> np.ndarray:
        """Vectors for `texts`: on bf16 for a bulk call (`bulk=True`: vectors memfs stores) once it is
        loaded, else on ONNX. A bf16 batch that raises is served by ONNX, and bf16 is not used again."""
        if self.bulk_state == "ready" and options.get("bulk") and len(texts) >= BULK_MIN_TEXTS:
            try:
                return self._bulk.embed(texts, batch_size, **options)
            except Exception as exc:  # noqa: BLE001 - the same vectors to within the agreement bar
                self.bulk_state = "failed"
                log.warning("the bf16 embedder failed (%s); ONNX serves all calls from now on", exc)
        return self.fast.embed(texts, batch_size, **options)

    def start_bulk(self, wait: bool = False) -> str:
        """Start loading the bf16 backend (once); with `wait`, until it is ready or failed. Its state."""
        with self._lock:
            if self._loader is None:
                self.bulk_state = "loading"
                self._loader = threading.Thread(target=self._load_bulk, name="llmos-embed-bf16-load")
                self._loader.start()
        if wait:
            self._loader.join()
        return self.bulk_state

    def _load_bulk(self) -> None:
        try:
            bulk = self._make_bulk()
            bulk.embed(["warm up", "the trace"])  # loads torch and the model, traces and freezes it
        except Exception as exc:  # noqa: BLE001 - ONNX keeps serving; the reason goes to the log
            self.bulk_state = "failed"
            if threading.main_thread().is_alive():
                log.warning("the bf16 embedder for bulk ingest did not load (%s); ONNX serves all calls", exc)
            else:  # the process is ending (torch's loading refuses new work then): nothing to report
                log.debug("the bf16 embedder stopped loading at exit: %s", exc)
            return
        self._bulk = bulk
        self.bulk_state = "ready"
        log.info("bulk ingest now embeds on bf16")
