"""memfs at scale, with small numbers: the index tier a volume's size asks for, the rebuild between tiers
reading its rows in bounded batches (never every vector at once), recall@10 at each tier against the
exact answer, and a kill -9 in the middle of a rebuild losing nothing. Real SQLite and FAISS; the vectors
are synthetic (benchmarks/synthetic.py) so recall is measured on thousands of passages without a model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np

from llmos.benchmarks.synthetic import passage_number, passage_path, synthetic_embeddings, volume_of

DIM = 384


def _recall(vol, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    hits = 0
    for q in queries:
        scores = vectors @ q
        exact = set(np.argsort(-scores)[:k].tolist())
        hits += len(exact & {passage_number(h["path"]) for h in vol.find("", vector=q, k=k)})
    return hits / (k * len(queries))


def test_each_tier_finds_the_exact_neighbours_and_the_rebuild_reads_bounded_batches(tmp_path, monkeypatch):
    import llmos.drivers.memfs_index as vi
    import llmos.kernel.memfs.upkeep as upkeep

    monkeypatch.setattr(vi, "HNSW_THRESHOLD", 1_000)
    monkeypatch.setattr(upkeep, "REBUILD_BATCH", 700)
    monkeypatch.setattr(upkeep, "TRAIN_SAMPLE", 500)
    largest = []
    add = vi.VectorIndex.add
    monkeypatch.setattr(vi.VectorIndex, "add", lambda self, ids, vectors: (largest.append(len(ids)), add(self, ids, vectors))[1])
    vectors = synthetic_embeddings(np.random.default_rng(0), 3_000)
    queries = synthetic_embeddings(np.random.default_rng(1), 40)

    small = volume_of(vectors[:800], tmp_path / "small", lambda _msg: None, batch=400)
    assert small.index.kind == "flat" and _recall(small, vectors[:800], queries) == 1.0  # exact below the threshold
    small.close()

    largest.clear()
    vol = volume_of(vectors, tmp_path / "large", lambda _msg: None, batch=400)
    assert vol.index.kind == "hnsw" and len(vol.index) == 3_000
    assert max(largest) <= 700  # each write's batch (400) or a rebuild's batch (700), never all 3,000 at once
    assert _recall(vol, vectors, queries) >= 0.95
    assert vol.reconcile(repair=False) == {"rows": 3_000, "indexed": 3_000, "missing": 0, "orphaned": 0}

    vol.rm("/p/0", recursive=True)  # two thirds of the volume: tombstones pile up, and it falls to the threshold
    vol.rm("/p/1", recursive=True)
    assert vol.index.needs_rebuild
    vol.rebuild_thread.join(60)
    assert vol.index.kind == "flat" and len(vol.index) == 1_000 and not vol.index.needs_rebuild
    remaining = np.arange(2_000, 3_000)
    for q in queries[:10]:
        exact = remaining[np.argsort(-(vectors[2_000:] @ q))[:10]].tolist()
        assert [passage_number(h["path"]) for h in vol.find("", vector=q, k=10)] == exact
    vol.close()



def test_rows_removed_while_a_rebuild_finishes_still_get_the_index_their_size_asks_for(tmp_path, monkeypatch):
    import threading

    import llmos.drivers.memfs_index as vi

    monkeypatch.setattr(vi, "HNSW_THRESHOLD", 1_000)
    vol = volume_of(synthetic_embeddings(np.random.default_rng(0), 3_000), tmp_path / "v", lambda _msg: None, batch=400)
    assert vol.index.kind == "hnsw"
    built, release = threading.Event(), threading.Event()
    build_from = vi.VectorIndex.build_from.__func__

    def held(cls, *args, **kwargs):  # the rebuild has read its rows; it waits before swapping them in
        index = build_from(cls, *args, **kwargs)
        built.set()
        release.wait(30)
        return index

    monkeypatch.setattr(vi.VectorIndex, "build_from", classmethod(held))
    vol.rm("/p/0", recursive=True)  # 2,000 left, 1,000 tombstones: a rebuild starts, as HNSW (2,000 > 1,000)
    assert built.wait(60)
    vol.rm("/p/1", recursive=True)  # 1,000 left while that rebuild finishes: its index is stale on arrival
    release.set()
    vol.rebuild_thread.join(60)
    assert vol.index.kind == "flat" and len(vol.index) == 1_000 and not vol.index.needs_rebuild
    vol.close()


CRASHER = r"""
import sys, pathlib
import numpy as np
import llmos.drivers.memfs_index as vi
import llmos.kernel.memfs.upkeep as upkeep
vi.HNSW_THRESHOLD, upkeep.REBUILD_BATCH = 500, 100
add = vi.VectorIndex.add
def slow_add(self, ids, vectors):  # a rebuild's batches are slow, so the kill lands inside one
    import threading, time
    if threading.current_thread().name.startswith("llmos-memfs-rebuild"):
        sys.stdout.write("REBUILDING\n"); sys.stdout.flush()  # one write per line: two threads print
        time.sleep(0.2)
    return add(self, ids, vectors)
vi.VectorIndex.add = slow_add
from llmos.benchmarks.synthetic import GivenVectors, passage_path, synthetic_embeddings
from llmos.kernel.memfs.volume import FileWrite, StoredChunk, Volume
vectors = synthetic_embeddings(np.random.default_rng(0), 2_000)
vol = Volume("root", pathlib.Path(sys.argv[1]), GivenVectors(), vi.VectorIndex)
for start in range(0, 2_000, 100):
    vol.write_many([FileWrite(passage_path(i), f"passage {i}", embedded=([StoredChunk(0, 10, f"passage {i}")],
                              vectors[i:i + 1])) for i in range(start, start + 100)])
    sys.stdout.write(f"ACK {start + 99}\n"); sys.stdout.flush()
"""


def test_kill_9_during_an_index_rebuild_loses_nothing(tmp_path):
    from llmos.benchmarks.synthetic import GivenVectors
    from llmos.drivers.memfs_index import VectorIndex
    from llmos.kernel.memfs.volume import Volume

    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acked, rebuilding = -1, False
    for line in proc.stdout:  # the rebuild thread and the writer print: a line may hold both
        acked = max([acked, *map(int, re.findall(r"ACK (\d+)", line))])
        rebuilding = rebuilding or "REBUILDING" in line
        if rebuilding and acked >= 900:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert rebuilding and acked >= 900
    vectors = synthetic_embeddings(np.random.default_rng(0), 2_000)
    vol = Volume("root", tmp_path, GivenVectors(), VectorIndex)
    report = vol.reconcile(repair=False)
    assert report["rows"] >= acked + 1 and report["missing"] == report["orphaned"] == 0  # the index caught up
    for i in (0, acked // 2, acked):  # every acknowledged passage is found by its own vector
        assert vol.find("", vector=vectors[i], k=1)[0]["path"] == passage_path(i)
    vol.close()


def test_find_looks_further_when_the_best_chunks_share_a_file(tmp_path):
    """find returns the best chunk per file: when the nearest 20 chunks all belong to one file, it widens
    its search until it has k distinct files, in score order."""
    from llmos.benchmarks.synthetic import GivenVectors
    from llmos.drivers.memfs_index import VectorIndex
    from llmos.kernel.memfs.volume import FileWrite, StoredChunk, Volume

    rng = np.random.default_rng(3)
    q = synthetic_embeddings(rng, 1)[0]
    near = q + 0.05 * rng.normal(size=(20, DIM)).astype(np.float32)
    far = synthetic_embeddings(rng, 50)
    unit = lambda v: (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    vol = Volume("root", tmp_path, GivenVectors(), VectorIndex)
    vol.write_many([FileWrite("/big.txt", "big", embedded=([StoredChunk(i, i + 1, f"part {i}") for i in range(20)],
                                                             unit(near)))]
                   + [FileWrite(passage_path(i), f"passage {i}", embedded=([StoredChunk(0, 1, "p")], unit(far[i:i + 1])))
                      for i in range(50)])
    hits = vol.find("", vector=q, k=3)
    exact = np.argsort(-(unit(far) @ q))[:2].tolist()
    assert [h["path"] for h in hits] == ["/big.txt"] + [passage_path(i) for i in exact]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    vol.close()


def _mapping_of(address: int) -> dict[str, str]:
    """/proc/self/smaps' fields for the mapping holding `address`."""
    fields: dict[str, str] = {}
    inside = False
    for line in open("/proc/self/smaps"):
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            if inside:
                break
            inside = int(head[1], 16) <= address < int(head[2], 16)
        elif inside:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_an_hnsw_index_is_moved_onto_huge_pages_when_built_and_when_loaded(tmp_path):
    import faiss
    import pytest

    from llmos.drivers.huge_pages import HUGE_PAGE, thp_mode
    from llmos.drivers.memfs_index import VectorIndex

    if thp_mode() not in ("madvise", "always"):
        pytest.skip(f"transparent huge pages are {thp_mode() or 'absent'} here")
    vectors = synthetic_embeddings(np.random.default_rng(0), 12_000)  # 4.6 MB of codes: two whole 2 MiB pages
    ids = np.arange(12_000)
    query = synthetic_embeddings(np.random.default_rng(1), 1)[0]

    def codes_mapping(index: VectorIndex) -> dict[str, str]:
        codes = faiss.downcast_index(faiss.downcast_index(index._index.index).storage).codes
        start = faiss.rev_swig_ptr(codes.data(), 1).ctypes.data
        return _mapping_of((start + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1))  # its first whole huge page

    built = VectorIndex.build(DIM, ids, vectors, threshold=1_000)
    assert built.kind == "hnsw"
    mapping = codes_mapping(built)
    assert " hg" in " " + mapping["VmFlags"]  # marked for huge pages
    assert int(mapping["AnonHugePages"].split()[0]) >= 2048  # and already on them

    built.save(tmp_path / "index.faiss")
    loaded = VectorIndex.load(tmp_path / "index.faiss", DIM)
    assert loaded.settle(timeout=30)
    mapping = codes_mapping(loaded)
    assert " hg" in " " + mapping["VmFlags"] and int(mapping["AnonHugePages"].split()[0]) >= 2048
    assert loaded.search(query, 10) == built.search(query, 10)  # the same index, on other pages


def test_an_hnsw_index_grown_by_adds_is_moved_back_onto_huge_pages(tmp_path):
    """FAISS reallocates a growing index's arrays, onto 4 KiB pages: a volume grown by writes past its
    last rebuild must be moved again, in the background, without losing or changing anything."""
    import faiss
    import pytest

    from llmos.drivers.huge_pages import HUGE_PAGE, thp_mode
    from llmos.drivers.memfs_index import VectorIndex

    if thp_mode() not in ("madvise", "always"):
        pytest.skip(f"transparent huge pages are {thp_mode() or 'absent'} here")
    vectors = synthetic_embeddings(np.random.default_rng(0), 40_000)
    index = VectorIndex.build(DIM, np.arange(2_000), vectors[:2_000], threshold=1_000)
    first_codes = faiss.downcast_index(faiss.downcast_index(index._index.index).storage).codes
    start = faiss.rev_swig_ptr(first_codes.data(), 1).ctypes.data
    for begin in range(2_000, 40_000, 2_000):  # 15 MB of codes and graph, reallocated as they grow
        index.add(np.arange(begin, begin + 2_000), vectors[begin:begin + 2_000])
    assert index.settle(timeout=30)
    hnsw = faiss.downcast_index(index._index.index)
    for array in (faiss.downcast_index(hnsw.storage).codes, hnsw.hnsw.neighbors):
        address = faiss.rev_swig_ptr(array.data(), 1).ctypes.data
        assert address != start  # really reallocated since the build
        mapping = _mapping_of((address + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1))
        assert " hg" in " " + mapping["VmFlags"] and int(mapping["AnonHugePages"].split()[0]) >= 2048
    exact = VectorIndex.build(DIM, np.arange(40_000), vectors, threshold=10**9)  # flat: the true answer
    query = synthetic_embeddings(np.random.default_rng(1), 1)[0]
    assert len(index) == 40_000
    assert len({i for i, _s in index.search(query, 10)} & {i for i, _s in exact.search(query, 10)}) >= 9
