"""The vector index behind memfs (FAISS): exact while small, HNSW when large.

Vectors are L2-normalized float32, scored by inner product (cosine). Ids are the chunk rows' ids in
SQLite, so moves never touch the index and deletes remove exactly those ids. The exact index
(Flat/IP) deletes in place; HNSW cannot, so deletes there are tombstones filtered out of results,
and the index is rebuilt once they pile up. `VectorIndex.build` picks the kind from the size.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from .huge_pages import HUGE_PAGE, advise_huge

#: above this many vectors a volume switches from the exact index to HNSW
HNSW_THRESHOLD = 20_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 100
HNSW_EF_SEARCH = 48  # at 1e5 vectors; larger graphs search wider (ef_search)


def ef_search(n: int) -> int:
    """efSearch for an HNSW graph of n 8-bit vectors: 48 up to 1e5, +24 per tenfold beyond. Measured on
    embedding-like 384-d data (benchmarks/synthetic.py), recall@10: 0.964 at 1e5 (ef 48); at 1e6 (M 32)
    0.937 (ef 48), 0.953 (56), 0.964 (64), 0.973 (72, what this gives: 0.61 ms a query on 2 cores, 4 KiB
    pages), 0.980 (80, 0.64 ms). M 24 and M 48 graphs were no better at equal time (M 48: 0.962 at ef 56,
    0.54 ms; M 24: 0.966 at ef 80, 0.66 ms); IVF over the same vectors reached 0.75 at nprobe 48."""
    return HNSW_EF_SEARCH + max(0, round(24 * math.log10(max(n, 1) / 100_000)))
#: bytes moved onto huge pages per step (~60 ms with the index locked)
MOVE_STEP = 32 << 20
#: rebuild an HNSW index when this fraction of its vectors is deleted
TOMBSTONE_REBUILD = 0.2


class VectorIndex:
    def __init__(self, dim: int, kind: str = "flat") -> None:
        self.dim = dim
        self.kind = kind
        self._index = self._new(kind)
        self._ids: set[int] = set()
        self._dead: set[int] = set()
        self._plain_params: dict[int, object] = {}
        self.lock = threading.RLock()
        self._huge: list[tuple[int, int]] = []  # the (address, bytes) spans last put on huge pages
        self._bulk = False  # True while build_from fills it: its pages are moved once, at the end
        self._mover: threading.Thread | None = None

    def _new(self, kind: str):
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if kind == "hnsw":  # graph over 8-bit scalar-quantized vectors (trained on the first add)
            inner = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
            return faiss.IndexIDMap2(inner)
        raise ValueError(f"unknown index kind {kind!r}")

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, threshold: int | None = None) -> "VectorIndex":
        return cls.build_from(dim, len(ids), [(ids, vectors)], threshold=threshold)

    @classmethod
    def build_from(cls, dim: int, count: int, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                   sample: np.ndarray | None = None, threshold: int | None = None) -> "VectorIndex":
        """An index of the kind `count` vectors ask for, filled from (ids, vectors) batches, so a
        rebuild never holds every float32 vector at once (1e6 x 384 would be 1.5 GB). The quantizer
        trains on `sample` (a spread of the vectors) when given, else on the first batch."""
        limit = HNSW_THRESHOLD if threshold is None else threshold
        index = cls(dim, "hnsw" if count > limit else "flat")
        index._bulk = True
        if sample is not None and len(sample) and not index._index.is_trained:
            index._index.train(np.ascontiguousarray(sample, dtype=np.float32))
        for ids, vectors in batches:
            index.add(ids, vectors)
        index._bulk = False
        index.use_huge_pages(collapse=True)  # a rebuild runs on the upkeep thread: searches go on meanwhile
        return index

    def _spans(self) -> list[tuple[int, int]]:
        """(address, bytes) of an HNSW index's two big arrays, its codes and its graph (under the lock:
        an add may move them)."""
        hnsw = faiss.downcast_index(self._index.index)
        arrays = [(faiss.downcast_index(hnsw.storage).codes, 1), (hnsw.hnsw.neighbors, 4)]
        return [(faiss.rev_swig_ptr(vec.data(), 1).ctypes.data, vec.size() * size) for vec, size in arrays if vec.size()]

    def use_huge_pages(self, collapse: bool) -> int:
        """Put an HNSW index's codes and graph on 2 MiB pages (drivers/huge_pages.py: its random reads then
        miss the TLB far less). Returns the bytes advised; 0 for the exact index or where THP is off.
        With `collapse` the memory is moved MOVE_STEP bytes at a time, each step under the lock (an add
        may move or free the arrays in between; a search waits at most one step)."""
        if self.kind != "hnsw":
            return 0
        with self.lock:
            spans = self._spans()
            advised = sum(advise_huge(address, nbytes, collapse=False) for address, nbytes in spans)
            self._huge = spans
        for address, nbytes in spans if collapse and advised else ():
            first, end = (address + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), address + nbytes
            for at in range(first, end, MOVE_STEP):
                with self.lock:
                    if [a for a, _n in self._spans()] != [a for a, _n in spans]:
                        return advised  # an add moved the arrays meanwhile: _move_while_growing goes again
                    advise_huge(at, min(MOVE_STEP, end - at), collapse=True)
        return advised

    def _outgrown(self) -> bool:
        """True when an array has moved or grown by a quarter since it was last put on huge pages."""
        last = dict(self._huge)
        return any(address not in last or nbytes > 1.25 * last[address] for address, nbytes in self._spans())

    def _grown(self) -> None:
        """After an add (under the lock): FAISS grows an HNSW index's arrays by reallocating them
        (std::vector), and the new memory is on 4 KiB pages again. Without this a volume that grows from
        20,000 vectors to 1e6 by writes would be on huge pages only once reloaded."""
        if self.kind == "hnsw" and not self._bulk and self._mover is None and self._outgrown():
            self._mover = threading.Thread(target=self._move_while_growing, daemon=True, name="memfs-huge-pages")
            self._mover.start()

    def _move_while_growing(self) -> None:
        try:
            while True:
                self.use_huge_pages(collapse=True)
                with self.lock:
                    if not self._outgrown():
                        self._mover = None  # under the lock: the next add that outgrows it starts another
                        return
        except BaseException:
            with self.lock:  # a failed move leaves the pages as they were; a later add may try again
                self._mover = None
            raise

    def settle(self, timeout: float = 60.0) -> bool:
        """Wait for the background move onto huge pages, if one runs; True once none does."""
        deadline = time.monotonic() + timeout
        while (mover := self._mover) is not None and time.monotonic() < deadline:
            mover.join(max(0.0, deadline - time.monotonic()))
        return self._mover is None

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> set[int]:
        with self.lock:
            return set(self._ids)

    @property
    def needs_rebuild(self) -> bool:
        """True when the kind no longer fits the size, or tombstones pile up."""
        n = len(self._ids)
        wrong_kind = (self.kind == "flat") == (n > HNSW_THRESHOLD)
        return wrong_kind or len(self._dead) > TOMBSTONE_REBUILD * max(n, 1)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self.lock:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            if self._dead:  # an id's vector never changes (memfs chunk rows): a tombstoned one comes back as is
                back = np.fromiter((int(i) in self._dead for i in ids), dtype=bool, count=len(ids))
                self._dead.difference_update(int(i) for i in ids[back])
                self._ids.update(int(i) for i in ids[back])
                ids, vectors = ids[~back], vectors[~back]
                if len(ids) == 0:
                    return
            if not self._index.is_trained:
                self._index.train(vectors)
            self._index.add_with_ids(vectors, ids)
            self._ids.update(int(i) for i in ids)
            self._grown()

    def remove(self, ids) -> None:
        ids = [int(i) for i in ids if int(i) in self._ids]
        if not ids:
            return
        with self.lock:
            if self.kind == "flat":
                self._index.remove_ids(np.asarray(ids, dtype=np.int64))
            else:
                self._dead.update(ids)
            self._ids.difference_update(ids)

    def search(self, vector: np.ndarray, k: int, subset: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Best `k` (id, score) pairs, optionally among the ids in `subset` only."""
        with self.lock:
            if not self._ids:
                return []
            want = min(k + len(self._dead), len(self._ids) + len(self._dead))
            params = None
            if subset is not None and len(subset) == 0:
                return []
            sel = None if subset is None else faiss.IDSelectorBatch(np.ascontiguousarray(subset, dtype=np.int64))
            if self.kind == "hnsw":
                base = ef_search(len(self._ids))
                ef = max(base, want)
                if sel is None and ef == base:  # the usual query's, made once per size (a SWIG object: ~10 us)
                    params = self._plain_params.get(ef) or self._plain_params.setdefault(
                        ef, faiss.SearchParametersHNSW(efSearch=ef))
                else:  # a scoped or wide search (its own k, tombstones): not kept, so clients cannot grow a cache
                    params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)  # sel None: every id
            elif sel is not None:
                params = faiss.SearchParameters(sel=sel)
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # one query: OpenMP start-up costs more than it saves
            try:
                scores, ids = self._index.search(np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32),
                                                 want, params=params)
            finally:
                faiss.omp_set_num_threads(threads)
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and int(i) not in self._dead]
        return hits[:k]

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename)."""
        tmp = path.with_name(path.name + ".tmp")
        with self.lock:
            faiss.write_index(self._index, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, dim: int) -> "VectorIndex":
        raw = faiss.read_index(str(path))
        if raw.d != dim:
            raise ValueError(f"index dimension {raw.d} does not match the embedder's {dim}")
        index = cls(dim, "hnsw" if "HNSW" in type(faiss.downcast_index(raw.index)).__name__ else "flat")
        index._index = faiss.downcast_index(raw) if not isinstance(raw, faiss.IndexIDMap2) else raw
        index._ids = {int(i) for i in faiss.vector_to_array(index._index.id_map)}
        with index.lock:
            index._grown()  # moved onto huge pages off this thread
        return index
