"""One memfs volume: documents and chunk vectors in SQLite (the source of truth), a FAISS index as
a rebuildable cache of those vectors (kept equal to the rows by kernel/memfs/upkeep.py), and named
copy-on-write snapshots of the rows (kernel/memfs/snapshots.py).

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
from .snapshots import VolumeSnapshots, check_name, default_name
from .upkeep import IndexUpkeep

log = logging.getLogger("llmos.memfs")

#: the most chunks one find looks at to fill k distinct files (past it: fewer files, the best ones)
FIND_MAX_CHUNKS = 1024
#: bytes of the database file read through a mapping (SQLite caps it at 2 GiB)
MMAP_BYTES = 2 << 30

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, text TEXT NOT NULL, size INTEGER NOT NULL,
    ctime REAL NOT NULL, mtime REAL NOT NULL, tags TEXT NOT NULL DEFAULT '[]', source TEXT, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, seq INTEGER NOT NULL,
    start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredChunk:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class FileWrite:
    """One file of a `write_many`: its text, and optionally its chunks and their vectors already made."""
    path: str
    text: str
    tags: list[str] | None = None
    source: str | None = None
    embedded: tuple[list, np.ndarray] | None = None


class Volume(IndexUpkeep):
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
        # 16 MiB of pages (SQLite's default is 2): at 1e6 chunks the B-tree's interior pages stay cached,
        # so each hit a search looks up costs one leaf read
        self.db.execute("PRAGMA cache_size=-16384")
        # rows are read through a mapping of the file (up to SQLite's 2 GiB cap): a search's hits cost no
        # read() each (1e6 chunks: 76 -> 52 us for 10 rows), and mapped pages are not the idle, unmapped
        # page cache that proactive reclaim (DAMON pageout on VMs such as this one) drops after a minute,
        # which turned a search's row reads into disk reads (1e5 chunks: 0.32 -> 1.33 ms a query). The
        # mapped pages are page cache, shown as RssFile: clean, shared and reclaimable, not the process's own
        self.db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        # directory prefixes are LIKE patterns: ASCII case-insensitive by default, which would make
        # /HOME/ALICE "below" /home/alice (another tenant's files listed, moved or removed with it)
        self.db.execute("PRAGMA case_sensitive_like=ON")
        if self.db.execute("SELECT 'A' LIKE 'a'").fetchone()[0]:
            raise StorageError("this SQLite ignores case_sensitive_like: memfs cannot tell /A from /a")
        self.db.executescript(SCHEMA)
        self.snaps = VolumeSnapshots(self.db, directory)
        self.lock = threading.RLock()
        self._version = None
        self._saved = time.monotonic()
        self._dirty = False
        self._rebuilding = False
        self.rebuild_thread: threading.Thread | None = None
        self._load_index()

    # -- files -------------------------------------------------------------------------------------

    def _file(self, path: str):
        return self.db.execute("SELECT path, text, size, ctime, mtime, tags, source FROM files WHERE path=?",
                               (path,)).fetchone()

    def _is_dir(self, path: str) -> bool:
        return path == "/" or self.db.execute("SELECT 1 FROM files WHERE path LIKE ? ESCAPE '\\' LIMIT 1",
                                              (like_prefix(path),)).fetchone() is not None

    def write(self, path: str, text: str, *, tags: list[str] | None = None, source: str | None = None,
              embedded: tuple[list, np.ndarray] | None = None) -> dict[str, Any]:
        if embedded is None:  # one file: embedded at the caller's priority, not an import's (batch_prepare)
            _check_text(text)
            embedded = self.prepare(text)
        result = self.write_many([FileWrite(path, text, tags, source, embedded)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def write_many(self, files: list[FileWrite]) -> list[dict[str, Any] | MemPathError | InvalidRequestError]:
        """Create or replace several files in one transaction (one fsync for all: the bulk path of
        import). Each entry's result is its stat, or the error that left that file alone (a path
        that is a directory, text that is not valid UTF-8); the others are written all the same."""
        results: list[Any] = [None] * len(files)
        todo = []
        for i, f in enumerate(files):
            try:
                _check_text(f.text)
                todo.append((i, f, f.embedded))
            except InvalidRequestError as exc:
                results[i] = exc
        need = [j for j, (_i, _f, emb) in enumerate(todo) if emb is None]
        if need:  # embedded in shared batches, before the volume is locked
            for j, emb in zip(need, batch_prepare(self.embedder, [todo[j][1].text for j in need])):
                todo[j] = (todo[j][0], todo[j][1], emb)
        with self.lock:
            stale, added = [], []
            with self._transaction(f"write {len(todo)} file(s)"):  # acknowledged once it commits
                for i, f, (chunks, vectors) in todo:
                    try:
                        self._check_writable(f.path)
                    except MemPathError as exc:
                        results[i] = exc
                        continue
                    old_ids, new_ids = self._write_rows(f, chunks, vectors)
                    stale += old_ids
                    added.append((new_ids, vectors))
                    results[i] = f.path
                self._bump()
            self.index.remove(stale)
            added = [(ids, vectors) for ids, vectors in added if len(ids)]
            if added:  # one add for the whole batch (an HNSW insert per file costs far more)
                self.index.add(np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _v in added]),
                               np.concatenate([vectors for _ids, vectors in added]))
            self._after_change()
            return [self.stat(r) if isinstance(r, str) else r for r in results]

    def _check_writable(self, path: str) -> None:
        if path == "/":
            raise MemPathError("/ is a directory: give a file path", param="path")
        if self._is_dir(path):
            raise MemPathError(f"{path} is a directory", param="path")
        self._check_parents(path)

    def _write_rows(self, f: FileWrite, chunks, vectors) -> tuple[list[int], list[int]]:
        """One file's rows (inside the caller's transaction): (chunk ids replaced, chunk ids added)."""
        now, old = time.time(), self._file(f.path)
        self.snaps.keep("path=?", (f.path,))  # what a snapshot names survives the overwrite
        stale = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE path=?", (f.path,))]
        self.db.execute("DELETE FROM chunks WHERE path=?", (f.path,))
        self.db.execute(
            "INSERT INTO files(path, text, size, ctime, mtime, tags, source, sha256) VALUES(?,?,?,?,?,?,?,?) "
            "ON CONFLICT(path) DO UPDATE SET text=excluded.text, size=excluded.size, mtime=excluded.mtime, "
            "tags=excluded.tags, source=excluded.source, sha256=excluded.sha256",
            (f.path, f.text, len(f.text.encode()), old[3] if old else now, now,
             json.dumps(f.tags if f.tags is not None else (json.loads(old[5]) if old else [])),
             f.source if f.source is not None else (old[6] if old else None), sha256(f.text.encode()).hexdigest()))
        ids = [self.db.execute("INSERT INTO chunks(path, seq, start, end, text, vector) VALUES(?,?,?,?,?,?)",
                               (f.path, seq, c.start, c.end, c.text, v.tobytes())).lastrowid
               for seq, (c, v) in enumerate(zip(chunks, vectors))]
        return stale, ids

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
                self.snaps.keep(where, args)
                ids = [r[0] for r in self.db.execute(f"SELECT id FROM chunks WHERE {where}", args)]
                self.db.execute(f"DELETE FROM chunks WHERE {where}", args)
                count = self.db.execute(f"DELETE FROM files WHERE {where}", args).rowcount
                self._bump()
            self.index.remove(ids)
            self._after_change()
            return count

    # -- snapshots (kernel/memfs/snapshots.py) -----------------------------------------------------

    def snapshot(self, name: str | None = None) -> dict[str, Any]:
        """Name the volume's current state (copy-on-write: no row is copied now), saving the index with it."""
        name = default_name() if name is None else check_name(name)
        with self.lock:
            self._sync()
            with self._transaction(f"take snapshot {name}"):
                self.snaps.record(name)
                for stray in self.snaps.stray_index_files():
                    stray.unlink(missing_ok=True)
                if self._db_version() == self._version:  # the index holds exactly these rows
                    self.snaps.dir.mkdir(exist_ok=True)
                    self.index.save(self.snaps.index_file(name))
            return self.snaps.describe(name)

    def snapshots(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.snaps.list()

    def rollback(self, name: str) -> dict[str, Any]:
        """Make the volume what it was at snapshot `name` (files, texts, chunks, moves; the index the
        snapshot saved, so searches answer as they did then). The snapshot stays."""
        check_name(name)
        with self.lock:
            self._sync()
            with self._transaction(f"roll back to snapshot {name}"):
                self.snaps.restore_rows(name)
                self._bump()
            saved = self.snaps.index_file(name)
            try:
                if saved.exists():
                    self.index = self.index_cls.load(saved, self.embedder.dim)
            except Exception as exc:  # noqa: BLE001 - the index is a cache: caught up from the rows instead
                log.warning("memfs volume %s: the index saved with snapshot %s is unreadable (%s); the current "
                            "one is caught up with the rolled-back rows instead", self.name, name, exc)
            self._dirty = True
            self.reconcile()
            return self.snaps.describe(name)

    def delete_snapshot(self, name: str) -> None:
        """Delete snapshot `name`, freeing the rows only it kept."""
        check_name(name)
        with self.lock, self._transaction(f"delete snapshot {name}"):
            self.snaps.forget(name)
        self.snaps.index_file(name).unlink(missing_ok=True)

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
            rows: dict[int, tuple] = {}
            want = k
            while True:  # k chunks first; more only when several of them share a file (best chunk per file)
                hits = self.index.search(vec, want, subset)
                ids = [cid for cid, _score in hits if cid not in rows]
                rows.update((r[0], r[1:]) for r in self.db.execute(  # one query for the new hits, not one per hit
                    f"SELECT id, path, seq, text FROM chunks WHERE id IN ({','.join('?' * len(ids))})", ids))
                out, seen = [], set()
                for cid, score in hits:
                    row = rows.get(cid)
                    if row is None or row[0] in seen:
                        continue
                    seen.add(row[0])
                    out.append({"path": row[0], "score": score, "text": row[2], "chunk": row[1]})
                if len(out) >= k or len(hits) < want or want >= FIND_MAX_CHUNKS:
                    return out[:k]
                want = min(want * 4, FIND_MAX_CHUNKS)

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


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise InvalidRequestError("memfs stores text: decode the content first", param="text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError("the text is not valid UTF-8", param="text") from None


def batch_prepare(embedder, texts: list[str], progress: Callable[[int], None] | None = None):
    """Chunk several texts and embed all their chunks in shared batches (the fast path for import,
    queued at BATCH priority so interactive searches go first)."""
    per_text = [embedder.chunk(t) for t in texts]
    flat = [c.text for chunks in per_text for c in chunks]
    # stored, never handed to a client: an embedder that routes bulk work may run them on its bulk backend
    hints = {"bulk": True} if getattr(embedder, "routes_bulk", False) else {}
    vectors = embedder.embed(flat, priority="batch", **hints)
    out, offset = [], 0
    for chunks in per_text:
        out.append((chunks, vectors[offset:offset + len(chunks)]))
        offset += len(chunks)
        if progress:
            progress(1)
    return out
