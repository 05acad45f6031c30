"""Keeping a volume's vector index equal to its chunk rows (a mixin of `Volume`, kernel/memfs/volume.py).

Boundaries: the index is a cache of the rows' vectors. Loading it (rebuilt from the rows when the file is
unreadable), reconciling it with the rows (rows with no vector are embedded, missing vectors added,
orphans dropped), rebuilding it as another kind in the background when the size asks for it (reading the
rows in bounded batches), and saving it atomically at most every SAVE_EVERY_S seconds (longer for an index
that takes long to write). Other processes' writes are seen through the `meta` version row and reconciled
before each search.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("llmos.memfs")

SAVE_EVERY_S = 5.0
SAVE_COST_FACTOR = 20  # index saves take at most ~1/20 of a busy volume's time
REBUILD_BATCH = 20_000  # rows read per step of a rebuild (~30 MB of 384-d vectors)
TRAIN_SAMPLE = 50_000  # vectors an index's quantizer trains on, spread over the volume


class IndexUpkeep:
    name: str
    dir: Path
    db: sqlite3.Connection
    embedder: Any
    index_cls: Any
    index: Any
    lock: threading.RLock
    notices: list[str]
    _version: str | None
    _saved: float
    _save_cost: float = 0.0  # seconds the last index save took
    _dirty: bool
    _rebuilding: bool
    rebuild_thread: threading.Thread | None

    # -- index upkeep ------------------------------------------------------------------------------

    @property
    def index_file(self) -> Path:
        return self.dir / "index.faiss"

    def _db_version(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        return row[0] if row else "0"

    def _load_index(self) -> None:
        dim = self.embedder.dim
        self.index = None
        if self.index_file.exists():
            try:
                self.index = self.index_cls.load(self.index_file, dim)
            except Exception as exc:  # noqa: BLE001 - a corrupt index is rebuilt from the rows
                self.notices.append(f"index file {self.index_file} was unreadable ({exc}); rebuilt from stored text")
                log.warning(self.notices[-1])
        if self.index is None:
            self.index = self.index_cls(dim)
        self.reconcile()

    def reconcile(self, repair: bool = True) -> dict[str, int]:
        """Make the index hold exactly the chunk rows' vectors; embed rows that have none."""
        with self.lock:
            self._embed_missing()
            rows = {r[0] for r in self.db.execute("SELECT id FROM chunks")}
            have = self.index.ids()
            missing, orphaned = rows - have, have - rows
            report = {"rows": len(rows), "indexed": len(have), "missing": len(missing), "orphaned": len(orphaned)}
            if repair and (missing or orphaned):
                self.index.remove(orphaned)
                self._add_from_rows(sorted(missing))
                self._dirty = True
            if repair and self.index.needs_rebuild:
                self._rebuild_in_background()
            self._version = self._db_version()
            if self._dirty:
                self._save(force=True)
            return report

    def _embed_missing(self) -> None:
        todo = self.db.execute("SELECT id, text FROM chunks WHERE vector IS NULL").fetchall()
        if not todo:
            return
        vectors = self.embedder.embed([t for _i, t in todo])
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("UPDATE chunks SET vector=? WHERE id=?",
                            [(v.tobytes(), i) for (i, _t), v in zip(todo, vectors)])
        self.db.execute("COMMIT")
        self.notices.append(f"embedded {len(todo)} chunk(s) that had no vector")

    def _add_from_rows(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 5000):
            part = ids[start:start + 5000]
            self.index.add(*self._rows(f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(part))})",
                                       tuple(part)))

    def _rebuild_in_background(self) -> None:
        """Build an index of the right kind from the stored vectors on a thread; searches keep using
        the current one until the new one is swapped in (then it catches up with later writes)."""
        if self._rebuilding:
            return
        self._rebuilding = True

        def work() -> None:
            try:
                again = True
                while again:  # until the index fits: rows removed while it was built can leave it the wrong kind
                    with self.lock:
                        count = self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
                        step = max(1, count // TRAIN_SAMPLE)
                        _ids, sample = self._rows("SELECT id, vector FROM chunks WHERE id % ? = 0 AND vector IS NOT NULL "
                                                  "LIMIT ?", (step, TRAIN_SAMPLE))
                    fresh = self.index_cls.build_from(self.embedder.dim, count, self._row_batches(), sample=sample)
                    with self.lock:
                        self.index, self._dirty = fresh, True
                        self.reconcile()  # rows written or removed while it was built (its own rebuild waits for this loop)
                        again = self.index.needs_rebuild
                    log.info("memfs volume %s: index rebuilt as %s over %d vectors", self.name, fresh.kind, count)
            except Exception:  # noqa: BLE001 - the old index keeps serving
                log.exception("memfs volume %s: index rebuild failed", self.name)
            finally:
                self._rebuilding = False

        self.rebuild_thread = threading.Thread(target=work, name=f"llmos-memfs-rebuild-{self.name}", daemon=True)
        self.rebuild_thread.start()

    def _rows(self, sql: str, args: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.execute(sql, args).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.embedder.dim)
        return ids, vectors

    def _row_batches(self):
        """The stored vectors in id order, REBUILD_BATCH rows at a time (the lock held per batch only)."""
        last = -1
        while True:
            with self.lock:
                ids, vectors = self._rows("SELECT id, vector FROM chunks WHERE id > ? AND vector IS NOT NULL ORDER BY id LIMIT ?",
                                          (last, REBUILD_BATCH))
            if not len(ids):
                return
            yield ids, vectors
            last = int(ids[-1])

    def _save(self, force: bool = False) -> None:
        # a large index takes seconds to write: wait SAVE_COST_FACTOR times as long as the last save took
        # (the index is a cache of the rows, caught up on open, so a late save loses nothing)
        gap = max(SAVE_EVERY_S, SAVE_COST_FACTOR * self._save_cost)
        if self._dirty and (force or time.monotonic() - self._saved > gap):
            started = time.monotonic()
            self.index.save(self.index_file)
            self._saved, self._dirty = time.monotonic(), False
            self._save_cost = self._saved - started

    def _after_change(self) -> None:
        self._version, self._dirty = self._db_version(), True
        if self.index.needs_rebuild:
            self._rebuild_in_background()
        self._save()

    def _sync(self) -> None:
        """Pick up writes made by other processes since this one last looked."""
        if self._db_version() != self._version:
            self.reconcile()

    def _bump(self) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES('version', ?) ON CONFLICT(key) DO UPDATE SET "
                        "value=excluded.value", (f"{time.time_ns()}",))
