"""Embedding as kernel work: one queue, served in priority order, visible in `kernel.ps()`.

memfs and the HTTP embeddings endpoint never call the embedding model directly: they submit jobs
here (the HTTP endpoint with a cap on waiting jobs; a client that leaves cancels its waiting job).
A search query (HIGH) overtakes a bulk import (BATCH); within a priority, first come first served.
One worker thread takes the jobs, so embedding never competes with itself for the cores; each job
runs on a thread that ends with it (kernel/lib/threads.py: no OpenMP team of the embedder's outlives
the job to slow the torch driver's decoding).
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

from ..errors import QueueFullError
from ..lib.threads import in_passing_thread
from ..sched.request import Priority

_ids = itertools.count(1)


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    texts: list[str] = field(compare=False)
    owner: str = field(compare=False)
    future: Future = field(compare=False)
    user: str | None = field(compare=False, default=None)
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
        return self.submit(texts, priority=priority, owner=owner).result()

    def submit(self, texts: list[str], *, priority: Priority | str | int = Priority.NORMAL, owner: str = "memfs",
               max_waiting: int | None = None, user: str | None = None) -> Future:
        """Queue texts for embedding; the future gives the vectors. With `max_waiting`, a queue already
        holding that many waiting jobs refuses with QueueFullError. Cancelling the future before the job
        starts drops it from the queue (a job that started runs to its end)."""
        seq = next(_ids)
        job = _Job(int(Priority.parse(priority)), seq, list(texts), owner, Future(), user, f"embed-{seq}")
        with self._lock:
            if max_waiting is not None and sum(j.started is None for j in self._jobs.values()) >= max_waiting:
                raise QueueFullError(max_waiting)
            self._jobs[job.id] = job
        job.future.add_done_callback(lambda f, key=job.id: f.cancelled() and self._forget(key))
        self._queue.put(job)
        return job.future

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if not job.future.set_running_or_notify_cancel():  # cancelled while waiting
                continue
            job.started = time.monotonic()
            try:
                job.future.set_result(in_passing_thread(self.embedder.embed, job.texts, name="llmos-embed-job"))
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                job.future.set_exception(exc)
            finally:
                self._forget(job.id)

    def ps(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            jobs = list(self._jobs.values())
        return [{"id": j.id, "owner": j.owner, "user": j.user, "model": self.name, "driver": "embedder", "adapter": None,
                 "state": "running" if j.started else "waiting", "priority": Priority(j.priority).name.lower(),
                 "prompt_tokens": None, "output_tokens": None, "texts": len(j.texts), "age_s": now - j.arrival,
                 "queue_wait_s": (j.started - j.arrival) if j.started else None, "ttft_s": None,
                 "tokens_per_s": None} for j in sorted(jobs)]
