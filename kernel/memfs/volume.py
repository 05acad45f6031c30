"""One memfs volume: documents and chunk vectors in SQLite (the source of truth), a FAISS index as
a rebuildable cache of those vectors.

On disk (`<volume dir>/`): `mem.sqlite` (WAL, synchronous=FULL) with tables `files`, `chunks`
(id = the vector's id, its text span and its embedding) and `meta` (a version bumped by every
change); `index.faiss` (atomically replaced). A write is acknowledged once its transaction commits,
so it survives kill -9. Opening a volume loads the index (rebuilding it from the stored vectors if
the file is corrupt) and reconciles it with the rows: missing vectors are added (embedding rows that
have none), orphans dropped. Other processes' writes are picked up the same way before each search.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidRequestError, StorageError

from .grep import GREP_TIMEOUT_S, grep_lines
from .paths import MemNotFoundError, MemPathError, is_under, like_prefix, parent

log = logging.getLogger("llmos.memfs")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, text TEXT NOT NULL, size INTEGER NOT NULL,
    ctime REAL NOT NULL, mtime REAL NOT NULL, tags TEXT NOT NULL DEFAULT '[]', source TEXT, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, seq INTEGER NOT NULL,
    start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SAVE_EVERY_S = 5.0


@dataclass(frozen=True)
class StoredChunk:
    start: int
    end: int
    text: str


class Volume:
    def __init__(self, name: str, directory: Path, embedder, index_cls) -> None:
        self.name = name
        self.dir = directory
        self.embedder = embedder
        self.index_cls = index_cls
        self.notices: list[str] = []  # what opening found and repaired, for fsck and the user
        directory.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(directory / "mem.sqlite", check_same_thread=False, timeout=30,
                                  isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # directory prefixes are LIKE patterns: ASCII case-insensitive by default, which would make
        # /HOME/ALICE "below" /home/alice (another tenant's files listed, moved or removed with it)
        self.db.execute("PRAGMA case_sensitive_like=ON")
        if self.db.execute("SELECT 'A' LIKE 'a'").fetchone()[0]:
            raise StorageError("this SQLite ignores case_sensitive_like: memfs cannot tell /A from /a")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()
        self._version = None
        self._saved = time.monotonic()
        self._dirty = False
        self._rebuilding = False
        self.rebuild_thread: threading.Thread | None = None
        self._load_index()

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
            rows = self.db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(part))})",
                                   part).fetchall()
            if rows:
                self.index.add(np.array([r[0] for r in rows]), np.stack([np.frombuffer(r[1], np.float32) for r in rows]))

    def _rebuild_in_background(self) -> None:
        """Build an index of the right kind from the stored vectors on a thread; searches keep using
        the current one until the new one is swapped in (then it catches up with later writes)."""
        if self._rebuilding:
            return
        self._rebuilding = True

        def work() -> None:
            try:
                with self.lock:
                    rows = self.db.execute("SELECT id, vector FROM chunks").fetchall()
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                vecs = np.stack([np.frombuffer(r[1], np.float32) for r in rows]) if rows \
                    else np.zeros((0, self.embedder.dim), np.float32)
                fresh = self.index_cls.build(self.embedder.dim, ids, vecs)
                with self.lock:
                    self.index, self._dirty = fresh, True
                    self.reconcile()
                log.info("memfs volume %s: index rebuilt as %s over %d vectors", self.name, fresh.kind, len(ids))
            except Exception:  # noqa: BLE001 - the old index keeps serving
                log.exception("memfs volume %s: index rebuild failed", self.name)
            finally:
                self._rebuilding = False

        self.rebuild_thread = threading.Thread(target=work, name=f"llmos-memfs-rebuild-{self.name}", daemon=True)
        self.rebuild_thread.start()

    def _save(self, force: bool = False) -> None:
        if self._dirty and (force or time.monotonic() - self._saved > SAVE_EVERY_S):
            self.index.save(self.index_file)
            self._saved, self._dirty = time.monotonic(), False

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

    # -- files -------------------------------------------------------------------------------------

    def _file(self, path: str):
        return self.db.execute("SELECT path, text, size, ctime, mtime, tags, source FROM files WHERE path=?",
                               (path,)).fetchone()

    def _is_dir(self, path: str) -> bool:
        return path == "/" or self.db.execute("SELECT 1 FROM files WHERE path LIKE ? ESCAPE '\\' LIMIT 1",
                                              (like_prefix(path),)).fetchone() is not None

    def write(self, path: str, text: str, *, tags: list[str] | None = None, source: str | None = None,
              embedded: tuple[list, np.ndarray] | None = None) -> dict[str, Any]:
        if not isinstance(text, str):
            raise InvalidRequestError("memfs stores text: decode the content first", param="text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError("the text is not valid UTF-8", param="text") from None
        chunks, vectors = embedded if embedded is not None else self.prepare(text)
        with self.lock:
            if self._is_dir(path) and path != "/":
                raise MemPathError(f"{path} is a directory", param="path")
            if path == "/":
                raise MemPathError("/ is a directory: give a file path", param="path")
            self._check_parents(path)
            now = time.time()
            old = self._file(path)
            with self._transaction(f"write {path}"):  # acknowledged once it commits
                stale = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE path=?", (path,))]
                self.db.execute("DELETE FROM chunks WHERE path=?", (path,))
                self.db.execute(
                    "INSERT INTO files(path, text, size, ctime, mtime, tags, source, sha256) VALUES(?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(path) DO UPDATE SET text=excluded.text, size=excluded.size, mtime=excluded.mtime, "
                    "tags=excluded.tags, source=excluded.source, sha256=excluded.sha256",
                    (path, text, len(text.encode()), old[3] if old else now, now,
                     json.dumps(tags if tags is not None else (json.loads(old[5]) if old else [])),
                     source if source is not None else (old[6] if old else None), sha256(text.encode()).hexdigest()))
                ids = []
                for seq, (chunk, vec) in enumerate(zip(chunks, vectors)):
                    cur = self.db.execute("INSERT INTO chunks(path, seq, start, end, text, vector) VALUES(?,?,?,?,?,?)",
                                          (path, seq, chunk.start, chunk.end, chunk.text, vec.tobytes()))
                    ids.append(cur.lastrowid)
                self._bump()
            self.index.remove(stale)
            self.index.add(np.array(ids, dtype=np.int64), vectors)
            self._after_change()
        return self.stat(path)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One atomic change; a storage failure (disk full, read-only, I/O error) rolls it back and
        becomes a typed StorageError: what was stored before stays as it was."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            yield
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("rollback failed after %s", exc)
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"memfs could not {what}: {exc} (is the disk full or read-only?); "
                                   f"nothing was changed") from exc
            raise

    def _check_parents(self, path: str) -> None:
        anc = parent(path)
        while anc != "/":
            if self._file(anc) is not None:
                raise MemPathError(f"{anc} is a file, so {path} cannot be created under it", param="path")
            anc = parent(anc)

    def prepare(self, text: str):
        chunks = self.embedder.chunk(text)
        return chunks, self.embedder.embed([c.text for c in chunks])

    def cat(self, path: str) -> str:
        row = self._file(path)
        if row is None:
            raise (MemPathError(f"{path} is a directory", param="path") if self._is_dir(path)
                   else MemNotFoundError(f"no such file: {self.name}:{path}", param="path"))
        return row[1]

    def stat(self, path: str) -> dict[str, Any]:
        row = self._file(path)
        if row is not None:
            chunks = self.db.execute("SELECT count(*) FROM chunks WHERE path=?", (path,)).fetchone()[0]
            return {"path": path, "type": "file", "size": row[2], "ctime": row[3], "mtime": row[4],
                    "tags": json.loads(row[5]), "source": row[6], "chunks": chunks}
        if not self._is_dir(path):
            raise MemNotFoundError(f"no such file or directory: {path}", param="path")
        size, files, mtime = self.db.execute(
            "SELECT coalesce(sum(size),0), count(*), max(mtime) FROM files WHERE path LIKE ? ESCAPE '\\'",
            (like_prefix(path),)).fetchone()
        return {"path": path, "type": "dir", "size": size, "files": files, "mtime": mtime}

    def ls(self, path: str, recursive: bool = False) -> list[dict[str, Any]]:
        row = self._file(path)
        if row is not None:
            return [self.stat(path)]
        if not self._is_dir(path):
            raise MemNotFoundError(f"no such directory: {path}", param="path")
        rows = self.db.execute("SELECT path, size, mtime FROM files WHERE path LIKE ? ESCAPE '\\' ORDER BY path",
                               (like_prefix(path),)).fetchall()
        base = "" if path == "/" else path
        entries: dict[str, dict[str, Any]] = {}
        for p, size, mtime in rows:
            rest = p[len(base) + 1:].split("/")
            depth_paths = [base + "/" + "/".join(rest[:i + 1]) for i in range(len(rest))]
            for dp in depth_paths if recursive else depth_paths[:1]:
                is_file = dp == p
                e = entries.setdefault(dp, {"path": dp, "name": dp.rsplit("/", 1)[1],
                                            "type": "file" if is_file else "dir", "size": 0, "files": 0,
                                            "mtime": 0.0})
                e["size"] += size
                e["files"] += 1
                e["mtime"] = max(e["mtime"], mtime)
        return sorted(entries.values(), key=lambda e: e["path"])

    def mv(self, src: str, dst: str) -> None:
        """Rename a file or a whole directory; rows change, vectors and index ids do not."""
        with self.lock:
            is_file = self._file(src) is not None
            if not is_file and (src == "/" or not self._is_dir(src)):
                raise MemNotFoundError(f"no such file or directory: {src}", param="src")
            if is_under(dst, src):
                raise MemPathError(f"cannot move {src} into itself ({dst})", param="dst")
            if self._file(dst) is not None or self._is_dir(dst):
                raise MemPathError(f"{dst} exists already", param="dst")
            self._check_parents(dst)
            with self._transaction(f"move {src} to {dst}"):
                for table in ("files", "chunks"):
                    self.db.execute(f"UPDATE {table} SET path=? WHERE path=?", (dst, src))
                    if not is_file:
                        self.db.execute(f"UPDATE {table} SET path=? || substr(path, ?) WHERE path LIKE ? ESCAPE '\\'",
                                        (dst, len(src) + 1, like_prefix(src)))
                self._bump()
            self._version = self._db_version()

    def rm(self, path: str, recursive: bool = False) -> int:
        """Delete a file, or a directory with `recursive`; returns how many files went."""
        with self.lock:
            if self._file(path) is not None:
                where, args = "path=?", (path,)
            elif self._is_dir(path):
                if not recursive:
                    raise MemPathError(f"{path} is a directory: remove it with -r", param="path")
                where, args = "path LIKE ? ESCAPE '\\'", (like_prefix(path),)
            else:
                raise MemNotFoundError(f"no such file or directory: {path}", param="path")
            with self._transaction(f"remove {path}"):
                ids = [r[0] for r in self.db.execute(f"SELECT id FROM chunks WHERE {where}", args)]
                self.db.execute(f"DELETE FROM chunks WHERE {where}", args)
                count = self.db.execute(f"DELETE FROM files WHERE {where}", args).rowcount
                self._bump()
            self.index.remove(ids)
            self._after_change()
            return count

    # -- search ------------------------------------------------------------------------------------

    def find(self, query: str, within: str = "/", k: int = 5, vector: np.ndarray | None = None) -> list[dict]:
        """Best chunk per file, by meaning, among files under `within`."""
        with self.lock:
            self._sync()
            vec = vector if vector is not None else self.embedder.embed([query])[0]
            subset = None
            if within != "/":
                subset = np.array([r[0] for r in self.db.execute(
                    "SELECT id FROM chunks WHERE path=? OR path LIKE ? ESCAPE '\\'", (within, like_prefix(within)))])
            hits = self.index.search(vec, k * 4, subset)
            ids = [cid for cid, _score in hits]
            rows = {r[0]: r[1:] for r in self.db.execute(  # one query for all the hits, not one per hit
                f"SELECT id, path, seq, text FROM chunks WHERE id IN ({','.join('?' * len(ids))})", ids)}
            out, seen = [], set()
            for cid, score in hits:
                row = rows.get(cid)
                if row is None or row[0] in seen:
                    continue
                seen.add(row[0])
                out.append({"path": row[0], "score": score, "text": row[2], "chunk": row[1]})
            return out[:k]

    def grep(self, pattern: str, within: str = "/", ignore_case: bool = False, timeout: float = GREP_TIMEOUT_S,
             deadline: float | None = None) -> list[dict[str, Any]]:
        """Lines matching `pattern` in the files under `within` (kernel/memfs/grep.py: refused past its deadline)."""
        rows = self.db.execute("SELECT path, text FROM files WHERE path=? OR path LIKE ? ESCAPE '\\' ORDER BY path",
                               (within, like_prefix(within)))
        return grep_lines(rows, pattern, ignore_case=ignore_case, timeout=timeout, deadline=deadline, where=within)

    def close(self) -> None:
        with self.lock:
            self._save(force=True)
            self.db.close()


def batch_prepare(embedder, texts: list[str], progress: Callable[[int], None] | None = None):
    """Chunk several texts and embed all their chunks in shared batches (the fast path for import,
    queued at BATCH priority so interactive searches go first)."""
    per_text = [embedder.chunk(t) for t in texts]
    flat = [c.text for chunks in per_text for c in chunks]
    vectors = embedder.embed(flat, priority="batch")
    out, offset = [], 0
    for chunks in per_text:
        out.append((chunks, vectors[offset:offset + len(chunks)]))
        offset += len(chunks)
        if progress:
            progress(1)
    return out
