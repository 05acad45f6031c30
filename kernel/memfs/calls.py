"""The kernel's retrieval-memory calls: `mem` (memfs), the embedding service and `embed`, as a mixin of `Kernel`.

Boundaries: opens memfs (memfs/) and the embedding service lazily, on first use, under the kernel's
lock; the FAISS index and the embedder come from drivers/ at that moment, so importing the kernel
imports neither.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from ..sched.request import Priority

if TYPE_CHECKING:
    from .embedding import EmbeddingService


class MemCalls:
    config: Any
    _lock: threading.RLock
    _mem: Any
    _embedding: EmbeddingService | None
    _check_open: Callable[[], None]

    @property
    def mem(self):
        """Retrieval memory (memfs): write/append/cat/ls/stat/mv/rm/find/grep/import_dir/fsck."""
        from . import MemFS

        def backends():  # embedding through the kernel's queue (seen in ps), the FAISS index from drivers/
            from llmos.drivers.memfs_index import VectorIndex

            return self.embedding, VectorIndex

        with self._lock:
            if self._mem is None:
                self._mem = MemFS(self.config.home / "memfs", backends, self.config.mem_import_max_bytes)
            return self._mem

    @property
    def mem_opened(self) -> bool:
        return self._mem is not None

    @property
    def embedding(self) -> EmbeddingService:
        """The kernel's embedding service (all-MiniLM-L6-v2 on the `embedder_backend`): a priority queue visible in ps."""
        with self._lock:
            if self._embedding is None:
                from llmos.drivers.embedder_select import make_embedder

                from .embedding import EmbeddingService

                embedder = make_embedder(self.config.embedder_backend, cache_dir=self.config.embedder_cache)
                self._embedding = EmbeddingService(embedder)
            return self._embedding

    def embed(self, texts: list[str], *, priority: Priority | str = Priority.NORMAL, owner: str = "api"):
        """Embedding vectors (float32 rows, L2-normalized) for `texts`."""
        self._check_open()
        return self.embedding.embed(list(texts), priority=priority, owner=owner)
