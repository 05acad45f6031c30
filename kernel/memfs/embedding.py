"""Embedding as kernel work: one queue, served in priority order, visible in `kernel.ps()`.

memfs and the HTTP embeddings endpoint never call the embedding model directly: they submit jobs
here (the HTTP endpoint with a cap on waiting jobs; a client that leaves cancels its waiting job).
A search query (HIGH) overtakes a bulk import (BATCH); within a priority, first come first served.
One worker thread takes the jobs, so embedding never competes with itself for the cores; jobs waiting
together (concurrent HTTP requests, searches) are embedded in one batch of at most MAX_BATCH_TEXTS
texts, in priority order, each job getting its own rows back (a failed batch is retried job by job, so
one client's bad input fails only its own job). Each batch runs on a thread that ends with it
(kernel/lib/threads.py: no OpenMP team of the embedder's outlives it to slow the torch driver).
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

#: at most this many texts in one batch of several jobs (one encode batch: waiting jobs never make the
#: first one wait longer than a batch); a single larger job still runs as one
MAX_BATCH_TEXTS = 64


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
    count_tokens: bool = field(compare=False, default=False)  # the result is (vectors, tokens read)
    bulk: bool = field(compare=False, default=False)  # vectors to store (an import), never a client's answer


class EmbeddingService:
    routes_bulk = True  # memfs marks the texts it embeds to store (`bulk`): passed on where the embedder routes them

    def __init__(self, embedder, name: str = "embedder") -> None:
        self.embedder = embedder
        self.name = getattr(embedder, "name", name)
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self.batches = self.jobs_done = 0  # batches run, jobs served by them
        self._thread = threading.Thread(target=self._work, name="llmos-embed", daemon=True)
        self._thread.start()

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def chunk(self, text: str):
        return self.embedder.chunk(text)

    def expect_bulk(self, texts: int) -> None:
        """Bulk work of about `texts` texts is coming (an import): told to an embedder that can prepare."""
        expect = getattr(self.embedder, "expect_bulk", None)
        if expect is not None:
            expect(texts)

    def embed(self, texts: list[str], batch_size: int | None = None, *,
              priority: Priority | str | int = Priority.NORMAL, owner: str = "memfs", bulk: bool = False):
        """Queue texts for embedding and wait for the vectors (a float32 array, one row per text)."""
        return self.submit(texts, priority=priority, owner=owner, bulk=bulk).result()

    def submit(self, texts: list[str], *, priority: Priority | str | int = Priority.NORMAL, owner: str = "memfs",
               max_waiting: int | None = None, user: str | None = None, count_tokens: bool = False,
               bulk: bool = False) -> Future:
        """Queue texts for embedding; the future gives the vectors (with `count_tokens`: (vectors, tokens
        the model read), 0 tokens for an embedder that cannot count). With `max_waiting`, a queue already
        holding that many waiting jobs refuses with QueueFullError. Cancelling the future before the job
        starts drops it from the queue (a job that started runs to its end)."""
        seq = next(_ids)
        job = _Job(int(Priority.parse(priority)), seq, list(texts), owner, Future(), user, f"embed-{seq}",
                   count_tokens=count_tokens, bulk=bulk)
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
            jobs = [j for j in self._take() if j.future.set_running_or_notify_cancel()]  # not those cancelled
            now = time.monotonic()
            for job in jobs:
                job.started = now
            try:
                self._serve(jobs)
            except BaseException:  # noqa: BLE001 - one job's bad input fails that job alone
                for job in jobs:
                    self._serve([job], alone=True)
            finally:
                for job in jobs:
                    self._forget(job.id)

    def _take(self) -> list[_Job]:
        """The most urgent waiting job, and those after it in order while they fit one batch."""
        jobs = [self._queue.get()]
        total = len(jobs[0].texts)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            if total + len(job.texts) > MAX_BATCH_TEXTS:
                self._queue.put(job)  # its place in the order is its (priority, seq): unchanged
                return jobs
            jobs.append(job)
            total += len(job.texts)

    def _serve(self, jobs: list[_Job], alone: bool = False) -> None:
        """Embed `jobs` in one batch and give each its rows; raises for the caller to retry (unless `alone`)."""
        if not jobs:
            return
        texts = [t for job in jobs for t in job.texts]
        counter = getattr(self.embedder, "count_tokens", None)

        # a batch made wholly of bulk jobs (vectors memfs stores) says so to an embedder that routes it
        # (drivers/embedder_auto.py); any other job in the batch (a search, an HTTP client's texts, at
        # whatever priority) keeps it off, so a client's vectors never depend on others' imports
        bulk = getattr(self.embedder, "routes_bulk", False) and all(job.bulk for job in jobs)
        hints = {"bulk": True} if bulk else {}

        def batch():
            vectors = self.embedder.embed(texts, **hints)
            counts = counter(texts) if counter is not None and any(j.count_tokens for j in jobs) else None
            return vectors, counts

        try:
            vectors, counts = in_passing_thread(batch, name="llmos-embed-batch")
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            if not alone:
                raise
            jobs[0].future.set_exception(exc)
            return
        self.batches += 1
        self.jobs_done += len(jobs)
        start = 0
        for job in jobs:
            end = start + len(job.texts)
            rows = vectors[start:end]
            job.future.set_result((rows, sum(counts[start:end]) if counts else 0) if job.count_tokens else rows)
            start = end

    def ps(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            jobs = list(self._jobs.values())
        return [{"id": j.id, "owner": j.owner, "user": j.user, "model": self.name, "driver": "embedder", "adapter": None,
                 "state": "running" if j.started else "waiting", "priority": Priority(j.priority).name.lower(),
                 "prompt_tokens": None, "output_tokens": None, "texts": len(j.texts), "age_s": now - j.arrival,
                 "queue_wait_s": (j.started - j.arrival) if j.started else None, "ttft_s": None,
                 "tokens_per_s": None} for j in sorted(jobs)]
