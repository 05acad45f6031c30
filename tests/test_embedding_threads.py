"""The embedding queue leaves no OpenMP team behind (kernel/lib/threads.py): torch's thread pool for
the embedder lives only as long as a job, so the torch driver's decode thread keeps the cores' spin-
waiting to itself (with one more team than cores, libgomp sleeps at every barrier: measured 73 -> 50
tokens/s for mixed-adapter batches after a single embedding)."""

from __future__ import annotations

import os
import threading

import pytest

from llmos.kernel.lib.threads import in_passing_thread
from llmos.kernel.memfs.embedding import EmbeddingService

from .util import wait_for


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def test_in_passing_thread_returns_the_value_or_raises_the_error_in_the_caller():
    assert in_passing_thread(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        in_passing_thread(lambda: 1 / 0)


@pytest.mark.model
def test_an_embedding_job_leaves_no_thread_behind():
    import torch

    from llmos.drivers.embedder import SentenceEmbedder

    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP team to leave behind")
    embedder = SentenceEmbedder()
    warm = threading.Thread(target=embedder.embed, args=(["load the model and the tokenizer's pools"],))
    warm.start()
    warm.join()  # loaded, on a thread that is gone: what persists now belongs to the libraries, not a job
    before = _tasks()
    service = EmbeddingService(embedder)  # one worker thread takes the jobs
    vectors = service.embed(["one sentence to embed", "and another"] * 8)
    assert vectors.shape == (16, embedder.dim)
    wait_for(lambda: _tasks() <= before + 1, 10, msg=lambda: f"{_tasks() - before - 1} threads outlived the job")
