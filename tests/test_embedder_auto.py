"""The "auto" embedder on a CPU with bf16 instructions (drivers/embedder_auto.py): which calls go to the
bulk backend and when (logic, on recording embedders), what the kernel's queue tells it, and, with the
real model, that passages written in bulk on bf16 are found by ONNX queries as torch finds them."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from llmos.drivers import embedder_select
from llmos.drivers.embedder import Chunk
from llmos.drivers.embedder_auto import BULK_MIN_TEXTS, BULK_WORTH_TEXTS, AutoEmbedder
from llmos.drivers.embedder_bf16 import native_bf16
from llmos.kernel.memfs.embedding import EmbeddingService

from .test_embedder_onnx import QUERIES, assert_agreement


class Recording:
    """An embedder that records the calls it served and answers rows of its own `mark`."""

    name, dim = "recording", 2

    def __init__(self, mark: float, gate: threading.Event | None = None) -> None:
        self.mark, self.gate, self.calls = mark, gate, []
        self.started = threading.Event()

    def embed(self, texts, batch_size=None, **options):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.mark is None:
            raise RuntimeError("out of memory")
        self.calls.append((len(texts), options.get("bulk")))
        return np.full((len(texts), 2), self.mark, dtype=np.float32)

    def chunk(self, text):
        return [Chunk(0, len(text), text)]

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]


def _auto(gate=None, fail=False):
    fast, bulk = Recording(1.0), Recording(2.0, gate)
    made = []

    def make_bulk():
        made.append(1)
        if fail:
            raise RuntimeError("no torch here")
        return bulk

    return AutoEmbedder(fast, make_bulk), fast, bulk, made


def test_calls_alone_and_small_imports_load_nothing():
    auto, fast, _bulk, made = _auto()
    auto.embed(["a query"], priority="high")
    auto.embed(["t"] * 500)  # large, but not bulk work: an HTTP client's batch
    auto.embed(["t"] * 64, priority="batch", bulk=True)  # bulk work, but no import said it is large
    auto.expect_bulk(BULK_WORTH_TEXTS - 1)
    assert [n for n, _p in fast.calls] == [1, 500, 64]
    assert made == [] and auto.bulk_state == "idle" and auto.backend == "onnx"


def test_a_large_import_starts_the_load_and_onnx_serves_meanwhile():
    gate = threading.Event()  # the bulk backend's warm-up blocks: it is still loading
    auto, fast, bulk, made = _auto(gate)
    auto.expect_bulk(BULK_WORTH_TEXTS)
    assert auto.bulk_state == "loading" and made == [1]
    assert (auto.embed(["t"] * 64, bulk=True) == 1.0).all()  # still loading: ONNX
    auto.expect_bulk(5000)  # a second import: the same load
    gate.set()
    assert auto.start_bulk(wait=True) == "ready" and auto.backend == "onnx+bf16" and made == [1]
    assert (auto.embed(["t"] * BULK_MIN_TEXTS, bulk=True) == 2.0).all()
    assert (auto.embed(["t"] * BULK_MIN_TEXTS, priority="batch") == 1.0).all()  # not bulk: ONNX, whatever its priority
    assert (auto.embed(["t"] * (BULK_MIN_TEXTS - 1), bulk=True) == 1.0).all()  # a few files' write
    assert bulk.calls == [(2, None), (BULK_MIN_TEXTS, True)] and len(fast.calls) == 3  # its warm-up, one bulk call


def test_a_bulk_backend_that_fails_to_load_leaves_onnx_serving(caplog):
    auto, fast, _bulk, made = _auto(fail=True)
    with caplog.at_level(logging.WARNING, logger="llmos.memfs"):
        auto.expect_bulk(BULK_WORTH_TEXTS)
        assert auto.start_bulk(wait=True) == "failed"
    assert "no torch here" in caplog.text and "ONNX serves all calls" in caplog.text
    auto.expect_bulk(BULK_WORTH_TEXTS)
    assert (auto.embed(["t"] * 64, bulk=True) == 1.0).all() and made == [1]  # not tried again
    assert len(fast.calls) == 1


def test_a_bf16_batch_that_fails_is_served_by_onnx_and_bf16_is_left(caplog):
    auto = AutoEmbedder(Recording(1.0), lambda: Recording(None))  # loads, then raises on every batch
    auto._bulk, auto.bulk_state = Recording(None), "ready"
    with caplog.at_level(logging.WARNING, logger="llmos.memfs"):
        assert (auto.embed(["t"] * 64, bulk=True) == 1.0).all()
    assert auto.bulk_state == "failed" and "out of memory" in caplog.text
    assert (auto.embed(["t"] * 64, bulk=True) == 1.0).all() and len(auto.fast.calls) == 2


def test_import_dir_says_how_large_it_is_through_the_kernels_queue(tmp_path, monkeypatch):
    """MemFS.import_dir tells the embedder (through the kernel's queue) how many files come, and its
    batches reach it as bulk work once bf16 is ready."""
    from llmos.drivers import embedder_auto
    from llmos.drivers.memfs_index import VectorIndex
    from llmos.kernel.memfs import MemFS

    monkeypatch.setattr(embedder_auto, "BULK_WORTH_TEXTS", 40)
    monkeypatch.setattr(embedder_auto, "BULK_MIN_TEXTS", 2)
    auto, fast, bulk, made = _auto()
    service = EmbeddingService(auto)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(39):
        (src / f"f{i}.txt").write_text(f"file {i}")
    fs = MemFS(tmp_path / "mem", lambda: (service, VectorIndex))
    fs.import_dir(src, "/small")
    assert made == [] and len(fast.calls) == 1
    (src / "f39.txt").write_text("one more")
    fs.import_dir(src, "/large", batch_files=20)  # 40 files: the load starts before the first batch
    assert made == [1] and auto.start_bulk(wait=True) == "ready"
    fs.import_dir(src, "/again", batch_files=20)
    assert bulk.calls[-2:] == [(20, True), (20, True)]
    assert fs.stat("/again")["files"] == 40
    fs.close()


def test_the_queue_says_bulk_only_for_a_batch_of_texts_to_store():
    """Through the kernel's queue, bf16 ready: a batch of an import's texts with a search, or with a
    batch-class tenant's HTTP texts (BATCH priority too), goes to ONNX whole: vectors handed to a
    client never depend on others' imports. A batch made only of texts to store runs on bf16."""
    gate = threading.Event()
    fast = Recording(1.0, gate)
    auto = AutoEmbedder(fast, lambda: Recording(2.0))
    auto.start_bulk(wait=True)
    service = EmbeddingService(auto)
    first = service.submit(["holds the worker"], priority="high")
    assert fast.started.wait(10)  # the worker is in the first batch: the next ones wait together
    mixed = [service.submit(["t"] * 20, priority="batch", bulk=True), service.submit(["q"], priority="high"),
             service.submit(["t"] * 20, priority="batch", bulk=True)]
    gate.set()
    first.result(10)
    for f in mixed:
        assert (f.result(10) == 1.0).all()
    assert fast.calls[1] == (41, None)  # one batch: the search and both imports, no bulk hint
    gate.clear()
    fast.started.clear()
    first = service.submit(["holds the worker"], priority="high")
    assert fast.started.wait(10)
    tenant = [service.submit(["t"] * 20, priority="batch", bulk=True),
              service.submit(["a batch tenant's text"] * 20, priority="batch", user="nightly")]
    gate.set()
    for f in tenant:
        assert (f.result(10) == 1.0).all()
    assert fast.calls[-1] == (40, None)
    stored = service.embed(["t"] * 40, priority="batch", bulk=True)
    assert (stored == 2.0).all() and auto._bulk.calls[1:] == [(40, True)]  # after its warm-up


def test_auto_is_onnx_alone_where_bf16_would_be_emulated(monkeypatch, tmp_path):
    from llmos.drivers import embedder_bf16
    from llmos.drivers.embedder_onnx import OnnxEmbedder

    monkeypatch.setattr(embedder_bf16, "native_bf16", lambda: False)
    assert not embedder_select.bulk_bf16_available()
    assert type(embedder_select.make_embedder("auto", cache_dir=tmp_path)) is OnnxEmbedder
    monkeypatch.setattr(embedder_bf16, "native_bf16", lambda: True)
    assert type(embedder_select.make_embedder("auto", cache_dir=tmp_path)) is AutoEmbedder
    assert type(embedder_select.make_embedder("onnx", cache_dir=tmp_path)) is OnnxEmbedder


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no bf16 instructions")
@pytest.mark.model
def test_passages_written_in_bulk_are_found_by_onnx_queries_as_torch_finds_them(torch_reference):
    corpus = torch_reference[1]
    auto = embedder_select.make_embedder("auto")  # the suite's home: its ONNX export is shared
    assert isinstance(auto, AutoEmbedder) and auto.start_bulk(wait=True) == "ready"
    stored = auto.embed(corpus, bulk=True)  # bf16: texts to store
    queries = auto.embed(QUERIES, priority="high")  # ONNX
    assert np.array_equal(queries, auto.fast.embed(QUERIES))
    assert not np.array_equal(stored[:8], auto.fast.embed(corpus[:8]))  # really the other backend
    assert_agreement(stored, queries, torch_reference)


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no bf16 instructions")
@pytest.mark.model
def test_a_process_that_ends_while_bf16_loads_exits_cleanly():
    """torch abandoned mid-load on a daemon thread aborted the interpreter at exit ("terminate called
    without an active exception", exit status 134): the loader is not a daemon, and ends quietly."""
    import subprocess
    import sys

    code = ("from llmos.drivers.embedder_select import make_embedder; e = make_embedder('auto'); "
            "e.expect_bulk(10**6); print(e.bulk_state)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "loading", done.stderr[-2000:]
    assert "terminate called" not in done.stderr and "did not load" not in done.stderr
