"""Snapshots of one memfs volume: named, SQLite-backed and copy-on-write (never a copy of the volume).

Boundaries: owns the snapshot tables of a volume's `mem.sqlite` and the `snapshots/` directory beside
it; runs inside the volume's transactions (the volume calls `keep` before it deletes or overwrites rows,
and `restore_rows` inside its rollback transaction). It never touches the vector index itself.

How: a chunk row's content (text span, vector) never changes for its id (a write inserts new rows with
new ids; a move changes only `path`), and a file row is named by its text's SHA-256. So a snapshot is
  `snap_files`   path -> the file's metadata and text hash, as they were;
  `snap_chunks`  chunk id -> the path it had;
and nothing else. A row a snapshot names is copied aside (`kept_chunks`, `kept_texts`) only at the
moment a later write or rm deletes or overwrites it; deleting the last snapshot naming a kept row
frees it. The vector index, a cache of the rows, is saved beside the snapshot (`snapshots/NAME.faiss`)
so that a rollback restores the same index (an approximate index grown later would otherwise answer
slightly differently); without that file, rollback catches the current index up with the rows instead.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError, StorageError
from ..lib.names import checked_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (name TEXT PRIMARY KEY, created REAL NOT NULL, files INTEGER NOT NULL,
    chunks INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snap_files (snap TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    ctime REAL NOT NULL, mtime REAL NOT NULL, tags TEXT NOT NULL, source TEXT, sha256 TEXT NOT NULL,
    PRIMARY KEY (snap, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snap_files_sha ON snap_files(sha256);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);
CREATE TABLE IF NOT EXISTS snap_chunks (id INTEGER NOT NULL, snap TEXT NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (id, snap)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kept_chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, seq INTEGER NOT NULL,
    start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB);
CREATE TABLE IF NOT EXISTS kept_texts (sha256 TEXT PRIMARY KEY, text TEXT NOT NULL);
"""
CHUNK_COLUMNS = "id, path, seq, start, end, text, vector"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SnapshotNotFoundError(InvalidRequestError, LookupError):
    code = "snapshot_not_found"


def check_name(name: str) -> str:
    return checked_name(name, NAME_RE, "snapshot names are 1-64 letters, digits, '.', '_' or '-', starting with a "
                                       "letter or digit")


def default_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1000000:06d}"


class VolumeSnapshots:
    def __init__(self, db: sqlite3.Connection, directory: Path) -> None:
        self.db = db
        self.dir = directory / "snapshots"
        db.executescript(SCHEMA)

    def index_file(self, name: str) -> Path:
        return self.dir / f"{name}.faiss"

    def exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM snapshots WHERE name=?", (name,)).fetchone() is not None

    # -- inside the volume's write transactions ----------------------------------------------------

    def keep(self, where: str, args: tuple) -> None:
        """Before the chunk and file rows whose path matches `where` are deleted or overwritten: copy
        aside those a snapshot names (nothing when no snapshot exists: one lookup on a write's path)."""
        if self.db.execute("SELECT 1 FROM snapshots LIMIT 1").fetchone() is not None:
            self._keep_chunks(where, args)
            self._keep_texts(where, args)

    def _keep_chunks(self, where: str, args: tuple) -> None:
        self.db.execute(f"INSERT OR IGNORE INTO kept_chunks({CHUNK_COLUMNS}) SELECT {CHUNK_COLUMNS} FROM chunks "
                        f"WHERE ({where}) AND id IN (SELECT id FROM snap_chunks)", args)

    def _keep_texts(self, where: str, args: tuple) -> None:
        self.db.execute(f"INSERT OR IGNORE INTO kept_texts(sha256, text) SELECT sha256, text FROM files "
                        f"WHERE ({where}) AND sha256 IN (SELECT sha256 FROM snap_files)", args)

    def record(self, name: str) -> None:
        """Name the current rows (the caller holds the write transaction)."""
        if self.exists(name):
            raise InvalidRequestError(f"a snapshot named {name!r} exists already: pick another name, or delete it "
                                      f"first (`llmos mem snapshot VOLUME {name} --delete`)", param="name")
        files = self.db.execute("INSERT INTO snap_files(snap, path, size, ctime, mtime, tags, source, sha256) "
                                "SELECT ?, path, size, ctime, mtime, tags, source, sha256 FROM files", (name,)).rowcount
        chunks = self.db.execute("INSERT INTO snap_chunks(id, snap, path) SELECT id, ?, path FROM chunks",
                                 (name,)).rowcount
        size = self.db.execute("SELECT coalesce(sum(size), 0) FROM files").fetchone()[0]
        self.db.execute("INSERT INTO snapshots(name, created, files, chunks, bytes) VALUES(?,?,?,?,?)",
                        (name, time.time(), files, chunks, size))

    def restore_rows(self, name: str) -> None:
        """Make `files` and `chunks` what they were at snapshot `name` (inside the caller's transaction):
        rows another snapshot names are kept aside before they go; chunk rows come back from the kept
        copies with their ids, so the index can take them back by id. A snapshot exists (checked first), so
        the steps copy aside without `keep`'s check."""
        self.describe(name)  # SnapshotNotFoundError for an unknown name
        # 1. chunk rows the snapshot does not name go (kept first where another snapshot names them)
        self._keep_chunks("id NOT IN (SELECT id FROM snap_chunks WHERE snap=?)", (name,))
        self.db.execute("DELETE FROM chunks WHERE id NOT IN (SELECT id FROM snap_chunks WHERE snap=?)", (name,))
        # 2. chunk rows that were deleted since come back (ids are never reused: AUTOINCREMENT)
        self.db.execute(f"INSERT INTO chunks({CHUNK_COLUMNS}) SELECT {CHUNK_COLUMNS} FROM kept_chunks "
                        f"WHERE id IN (SELECT id FROM snap_chunks WHERE snap=?) "
                        f"AND id NOT IN (SELECT id FROM chunks)", (name,))
        self.db.execute("DELETE FROM kept_chunks WHERE id IN (SELECT id FROM chunks)")
        # 3. moved chunks get their old paths back
        self.db.execute("UPDATE chunks SET path=(SELECT s.path FROM snap_chunks s WHERE s.id=chunks.id AND s.snap=?) "
                        "WHERE path != (SELECT s.path FROM snap_chunks s WHERE s.id=chunks.id AND s.snap=?)",
                        (name, name))
        # 4. files: those whose path and text differ from the snapshot's go (texts a snapshot names are
        #    kept first), the rest get their old metadata, the missing come back with their text from a
        #    live file of the same hash or the kept copy
        differs = "NOT EXISTS (SELECT 1 FROM snap_files s WHERE s.snap=? AND s.path=files.path AND s.sha256=files.sha256)"
        self._keep_texts(differs, (name,))
        self.db.execute(f"DELETE FROM files WHERE {differs}", (name,))
        self.db.execute("UPDATE files SET (size, ctime, mtime, tags, source) = (SELECT s.size, s.ctime, s.mtime, "
                        "s.tags, s.source FROM snap_files s WHERE s.snap=? AND s.path=files.path)", (name,))
        self.db.execute(
            "INSERT INTO files(path, text, size, ctime, mtime, tags, source, sha256) "
            "SELECT s.path, coalesce((SELECT f.text FROM files f WHERE f.sha256=s.sha256 LIMIT 1), "
            "(SELECT k.text FROM kept_texts k WHERE k.sha256=s.sha256)), s.size, s.ctime, s.mtime, s.tags, "
            "s.source, s.sha256 FROM snap_files s WHERE s.snap=? AND s.path NOT IN (SELECT path FROM files)", (name,))
        restored = self.db.execute("SELECT count(*) FROM files").fetchone()[0]
        expected = self.db.execute("SELECT files FROM snapshots WHERE name=?", (name,)).fetchone()[0]
        if restored != expected:  # a kept text is missing: refuse rather than roll back to a partial volume
            raise StorageError(f"snapshot {name} names {expected} files but {restored} could be restored: a kept text "
                               f"is missing (run `llmos mem fsck`); nothing was changed")
        self._collect()

    # -- listing and deleting ------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any]:
        row = self.db.execute("SELECT name, created, files, chunks, bytes FROM snapshots WHERE name=?",
                              (name,)).fetchone()
        if row is None:
            raise SnapshotNotFoundError(f"no snapshot named {name!r} (see `llmos mem snapshots`)", param="name")
        return {"name": row[0], "created": row[1], "files": row[2], "chunks": row[3], "bytes": row[4],
                "index_saved": self.index_file(row[0]).exists()}

    def list(self) -> list[dict[str, Any]]:
        names = [r[0] for r in self.db.execute("SELECT name FROM snapshots ORDER BY created, name")]
        return [self.describe(n) for n in names]

    def kept_bytes(self) -> int:
        """Bytes held only for snapshots (rows deleted or overwritten since)."""
        chunks = self.db.execute("SELECT coalesce(sum(length(text) + coalesce(length(vector), 0)), 0) "
                                 "FROM kept_chunks").fetchone()[0]
        return chunks + self.db.execute("SELECT coalesce(sum(length(text)), 0) FROM kept_texts").fetchone()[0]

    def forget(self, name: str) -> None:
        """Delete snapshot `name` (inside the caller's transaction) and free what only it kept."""
        self.describe(name)  # SnapshotNotFoundError for an unknown name
        self.db.execute("DELETE FROM snap_files WHERE snap=?", (name,))
        self.db.execute("DELETE FROM snap_chunks WHERE snap=?", (name,))
        self.db.execute("DELETE FROM snapshots WHERE name=?", (name,))
        self._collect()

    def _collect(self) -> None:
        self.db.execute("DELETE FROM kept_chunks WHERE id NOT IN (SELECT id FROM snap_chunks)")
        self.db.execute("DELETE FROM kept_texts WHERE sha256 NOT IN (SELECT sha256 FROM snap_files)")

    def stray_index_files(self) -> list[Path]:
        """Saved indexes with no snapshot row (a crash between saving the index and committing)."""
        if not self.dir.is_dir():
            return []
        names = {r[0] for r in self.db.execute("SELECT name FROM snapshots")}
        return [f for f in self.dir.iterdir() if f.suffix != ".faiss" or f.stem not in names]
