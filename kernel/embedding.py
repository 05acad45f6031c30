"""Embedding as kernel work: one queue, served in priority order, visible in `kernel.ps()`.

memfs (and later the HTTP embeddings endpoint) never call the embedding model directly: they submit
jobs here. A search query (HIGH) overtakes a bulk import (BATCH); within a priority, first come first
served. One worker thread runs the model, so embedding never competes with itself for the cores.
The wrapped embedder is any object with `dim`, `chunk(text)` and `embed(texts)`.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .request import Priority

_ids = itertools.count(1)


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    texts: list[str] = field(compare=False)
    owner: str = field(compare=False)
    future: Future = field(compare=False)
    id: str = field(compare=False, default="")
    arrival: float = field(compare=False, default_factory=time.monotonic)
    started: float | None = field(compare=False, default=None)


class EmbeddingService:
    def __init__(self, embedder, name: str = "embedder") -> None:
        self.embedder = embedder
        self.name = getattr(embedder, "name", name)
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="llmos-embed", daemon=True)
        self._thread.start()

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def chunk(self, text: str):
        return self.embedder.chunk(text)

    def embed(self, texts: list[str], batch_size: int | None = None, *,
              priority: Priority | str | int = Priority.NORMAL, owner: str = "memfs"):
        """Queue texts for embedding and wait for the vectors (a float32 array, one row per text)."""
        job = _Job(int(Priority.parse(priority)), next(_ids), list(texts), owner, Future(), f"embed-{next(_ids)}")
        with self._lock:
            self._jobs[job.id] = job
        self._queue.put(job)
        return job.future.result()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            job.started = time.monotonic()
            try:
                job.future.set_result(self.embedder.embed(job.texts))
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                job.future.set_exception(exc)
            finally:
                with self._lock:
                    self._jobs.pop(job.id, None)

    def ps(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            jobs = list(self._jobs.values())
        return [{"id": j.id, "owner": j.owner, "model": self.name, "driver": "embedder", "adapter": None,
                 "state": "running" if j.started else "waiting", "priority": Priority(j.priority).name.lower(),
                 "prompt_tokens": None, "output_tokens": None, "texts": len(j.texts), "age_s": now - j.arrival,
                 "queue_wait_s": (j.started - j.arrival) if j.started else None, "ttft_s": None,
                 "tokens_per_s": None} for j in sorted(jobs)]
