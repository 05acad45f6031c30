"""The kernel's embedding queue batches jobs that wait together (logic, on a scripted embedder; the
real model over HTTP is in test_server.py): each job gets its own rows, in priority order, batches stay
within MAX_BATCH_TEXTS, and one job's failure fails that job alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from llmos.kernel.memfs.embedding import MAX_BATCH_TEXTS, EmbeddingService


class ScriptedEmbedder:
    """Row i of a text is [len(text), hash]: which text a row came from is checkable. The first call
    blocks until `release` is set, so the jobs queued meanwhile wait together."""

    dim = 2

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started, self.release = threading.Event(), threading.Event()

    def embed(self, texts):
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.started.set()
            self.release.wait(10)
        if any(t == "poison" for t in texts):
            raise ValueError("this embedder cannot read 'poison'")
        return np.array([[len(t), hash(t) % 1000] for t in texts], dtype=np.float32)

    def count_tokens(self, texts):
        return [len(t.split()) + 2 for t in texts]


def _rows(texts):
    return np.array([[len(t), hash(t) % 1000] for t in texts], dtype=np.float32)


@pytest.fixture
def queued():
    """A service busy with a first job, and a helper that queues jobs behind it."""
    emb = ScriptedEmbedder()
    service = EmbeddingService(emb)
    first = service.submit(["the first job"])
    assert emb.started.wait(10)
    return emb, service, first


def test_jobs_waiting_together_run_as_one_batch_and_each_gets_its_own_rows(queued):
    emb, service, first = queued
    texts = [[f"job {i} text {j}" for j in range(i + 1)] for i in range(5)]
    futures = [service.submit(t, count_tokens=(i == 2)) for i, t in enumerate(texts)]
    emb.release.set()
    first.result(10)
    for i, (t, f) in enumerate(zip(texts, futures)):
        got = f.result(10)
        if i == 2:
            got, tokens = got
            assert tokens == sum(len(x.split()) + 2 for x in t)
        np.testing.assert_array_equal(got, _rows(t))
    assert emb.calls[1] == [x for t in texts for x in t]  # one batch, in submission order
    assert service.batches == 2 and service.jobs_done == 6


def test_a_more_urgent_job_goes_first_and_a_batch_never_passes_the_cap(queued):
    emb, service, first = queued
    bulk = [service.submit([f"bulk {i}"] * 40, priority="batch") for i in range(2)]
    urgent = service.submit(["a search query"], priority="high")
    emb.release.set()
    for f in (first, urgent, *bulk):
        f.result(10)
    assert emb.calls[1][0] == "a search query"
    assert all(len(call) <= MAX_BATCH_TEXTS for call in emb.calls[1:])
    assert len(emb.calls) == 1 + 2  # the query with the first bulk job (41 texts), then the second


def test_one_jobs_failure_fails_that_job_alone(queued):
    emb, service, first = queued
    good = service.submit(["fine text"])
    bad = service.submit(["poison"])
    also_good = service.submit(["more fine text"], count_tokens=True)
    emb.release.set()
    first.result(10)
    np.testing.assert_array_equal(good.result(10), _rows(["fine text"]))
    with pytest.raises(ValueError, match="poison"):
        bad.result(10)
    rows, tokens = also_good.result(10)
    np.testing.assert_array_equal(rows, _rows(["more fine text"]))
    assert tokens == 5
