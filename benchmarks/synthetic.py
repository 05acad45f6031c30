"""Synthetic passages for the memfs benchmarks (B5, B5m, B15): sentence-embedding-like vectors, and a real
memfs volume holding one one-chunk file per vector (the vectors are given: these benchmarks time search
and snapshots, not the embedder)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def synthetic_embeddings(rng, n: int, dim: int = 384, latent: int = 24) -> np.ndarray:
    """Random unit vectors with the low intrinsic dimension of real sentence embeddings (a random
    linear map of a 24-d Gaussian plus noise). Uniform random 384-d vectors have no neighbourhoods
    at all: on them no approximate index beats brute force at high recall."""
    basis = np.random.default_rng(1).normal(size=(latent, dim)).astype(np.float32)
    v = rng.normal(size=(n, latent)).astype(np.float32) @ basis + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class GivenVectors:
    """The volume's embedder for synthetic passages: writes pass their chunks and vectors, and a query
    is embedded only as a synthetic vector of its own (no model needed)."""
    dim = 384

    def chunk(self, text):  # pragma: no cover - every write here passes its chunks
        raise AssertionError("synthetic volumes are written with precomputed chunks")

    def embed(self, texts, **_hints):
        return synthetic_embeddings(np.random.default_rng(len(texts)), len(texts), self.dim)


def passage_path(i: int) -> str:
    return f"/p/{i // 1000}/{i}.txt"


def passage_number(path: str) -> int:
    return int(path.rsplit("/", 1)[1].split(".")[0])


def volume_of(vectors: np.ndarray, directory: Path, log: Callable[[str], None], *, batch: int = 5_000):
    """A real memfs volume (SQLite + FAISS) with file passage_path(i) holding vectors[i]; returned once
    its index has been rebuilt to the kind its size asks for."""
    from llmos.drivers.memfs_index import VectorIndex
    from llmos.kernel.memfs.volume import FileWrite, StoredChunk, Volume

    vol = Volume("root", directory, GivenVectors(), VectorIndex)
    n = len(vectors)
    for start in range(0, n, batch):
        vol.write_many([FileWrite(passage_path(i), f"passage {i}",
                                  embedded=([StoredChunk(0, 10, f"passage {i}")], vectors[i:i + 1]))
                        for i in range(start, min(n, start + batch))])
        if (start // batch) % 20 == 19:
            log(f"  {start + batch:,} of {n:,} passages written")
    for _attempt in range(3):  # a rebuild started mid-write catches up; one more may follow it
        if vol.rebuild_thread is not None and vol.rebuild_thread.is_alive():
            log(f"  waiting for the index rebuild ({len(vol.index):,} vectors indexed so far)")
            vol.rebuild_thread.join()
        if not vol.index.needs_rebuild:
            return vol
        vol.reconcile()  # starts the rebuild the size asks for
    raise RuntimeError(f"the volume's index is still {vol.index.kind} after three rebuilds")
