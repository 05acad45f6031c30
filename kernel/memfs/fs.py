"""memfs: retrieval memory as a filesystem of volumes mounted into one namespace.

`$LLMOS_HOME/memfs/` holds one directory per volume and `mounts.json`. The root volume is mounted at
`/`; `mount(NAME)` creates a volume mounted at `/NAME`, so `/NAME/...` lives in its own store. All
paths are validated (kernel/memfs/paths.py) and translated to volume-relative paths; results come
back as full paths. Volumes open lazily. The vector index and embedder are backends (drivers/),
imported only when a volume opens.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..lib.atomic import atomic_write_text
from ..errors import InvalidRequestError

from .importer import DEFAULT_MAX_BYTES, Skip, read_text, scan
from .paths import MemNotFoundError, MemPathError, normalize
from .grep import GREP_TIMEOUT_S
from .volume import FileWrite, StoredChunk, Volume, batch_prepare

log = logging.getLogger("llmos.memfs")


def default_backends():
    """(embedder, index class): the "auto" embedder backend (ONNX Runtime, else sentence-transformers;
    bulk ingest on bf16 where the CPU has it)
    + FAISS, from drivers/ (imported lazily; the model itself loads on first use)."""
    from llmos.drivers.embedder_select import make_embedder
    from llmos.drivers.memfs_index import VectorIndex

    return make_embedder("auto"), VectorIndex


class MemFS:
    def __init__(self, root: Path, backends: Callable[[], tuple] = default_backends,
                 import_max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.import_max_bytes = import_max_bytes
        self._backends = backends
        self._embedder = None
        self._index_cls = None
        self._volumes: dict[str, Volume] = {}
        self._lock = threading.RLock()
        root.mkdir(parents=True, exist_ok=True)

    # -- mounts ------------------------------------------------------------------------------------

    @property
    def _mounts_file(self) -> Path:
        return self.root / "mounts.json"

    def mounts(self) -> dict[str, str]:
        """volume name -> mount point. An unreadable mounts.json is set aside and rebuilt (see _recover_mounts)."""
        try:
            data = _parse_mounts(self._mounts_file.read_bytes())
        except FileNotFoundError:
            data = {}
        except ValueError as exc:
            data = self._recover_mounts(str(exc))
        return {"root": "/", **data}

    def _recover_mounts(self, problem: str) -> dict[str, str]:
        """Move a corrupt mounts.json aside (`mounts.json.corrupt-<time>`, kept for inspection and
        reported by fsck) and rebuild the table from the volume directories: volume NAME is always
        mounted at /NAME, so nothing is lost."""
        with self._lock:
            try:  # another thread may have repaired it meanwhile
                return _parse_mounts(self._mounts_file.read_bytes())
            except (ValueError, FileNotFoundError):
                pass
            aside = self.root / f"{CORRUPT_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}"
            try:
                os.replace(self._mounts_file, aside)
            except FileNotFoundError:  # another process moved it first
                pass
            mounts = {d.name: f"/{d.name}" for d in sorted(self.root.iterdir())
                      if d.is_dir() and d.name.isidentifier() and d.name != "root"}
            atomic_write_text(self._mounts_file, json.dumps(mounts, indent=2))
            log.warning("memfs: %s was unreadable (%s); set aside as %s, mounts rebuilt from the volume "
                        "directories: %s", self._mounts_file, problem, aside.name, sorted(mounts) or "none")
            return mounts

    def mount(self, name: str) -> str:
        """Create (or re-mount) volume `name` at /name."""
        if not name.isidentifier() or name == "root":
            raise InvalidRequestError(f"volume names are identifiers other than 'root', got {name!r}", param="name")
        with self._lock:
            mounts = {k: v for k, v in self.mounts().items() if k != "root"}
            mounts[name] = f"/{name}"
            (self.root / name).mkdir(exist_ok=True)  # the directory alone lets a lost mount table be rebuilt
            atomic_write_text(self._mounts_file, json.dumps(mounts, indent=2))
        return f"/{name}"

    def volumes(self) -> list[dict[str, Any]]:
        rows = []
        for name, point in sorted(self.mounts().items(), key=lambda kv: kv[1]):
            vol = self._volume(name)
            stat = vol.stat("/")
            rows.append({"name": name, "mount": point, "files": stat["files"], "size": stat["size"],
                         "chunks": len(vol.index), "index": vol.index.kind, "dir": str(vol.dir)})
        return rows

    def _volume(self, name: str) -> Volume:
        with self._lock:
            vol = self._volumes.get(name)
            if vol is None:
                if self._embedder is None:
                    self._embedder, self._index_cls = self._backends()
                vol = Volume(name, self.root / name, self._embedder, self._index_cls)
                self._volumes[name] = vol
            return vol

    def resolve(self, path: str, param: str = "path") -> tuple[Volume, str, str]:
        """(volume, path inside it, its mount point) for a full path."""
        path = normalize(path, param=param)
        best = max(((n, p) for n, p in self.mounts().items() if p == "/" or path == p or path.startswith(p + "/")),
                   key=lambda np_: len(np_[1]))
        name, point = best
        inner = path if point == "/" else (path[len(point):] or "/")
        return self._volume(name), inner, point

    @staticmethod
    def _outer(point: str, inner: str) -> str:
        return inner if point == "/" else (point if inner == "/" else point + inner)

    # -- operations --------------------------------------------------------------------------------

    def write(self, path: str, text: str, **meta: Any) -> dict[str, Any]:
        vol, inner, point = self.resolve(path)
        if point != "/" and inner == "/":
            raise MemPathError(f"{path} is a volume's root directory", param="path")
        return self._fix(vol.write(inner, text, **meta), point)

    def append(self, path: str, text: str) -> dict[str, Any]:
        vol, inner, point = self.resolve(path)
        with vol.lock:  # read and rewrite as one step: concurrent appends all land
            try:
                old = vol.cat(inner)
            except FileNotFoundError:
                old = ""
            return self._fix(vol.write(inner, old + text), point)

    def cat(self, path: str) -> str:
        vol, inner, _ = self.resolve(path)
        return vol.cat(inner)

    def stat(self, path: str) -> dict[str, Any]:
        vol, inner, point = self.resolve(path)
        return self._fix(vol.stat(inner), point)

    def ls(self, path: str = "/", recursive: bool = False) -> list[dict[str, Any]]:
        vol, inner, point = self.resolve(path)
        entries = [self._fix(e, point) for e in vol.ls(inner, recursive)]
        if path in ("/", "") and point == "/":  # other volumes show up as directories of the root
            for name, mnt in self.mounts().items():
                if mnt != "/":
                    st = self._volume(name).stat("/")
                    entries.append({"path": mnt, "name": name, "type": "dir", "size": st["size"],
                                    "files": st["files"], "mtime": st["mtime"] or 0.0, "volume": name})
        return sorted(entries, key=lambda e: e["path"])

    def mv(self, src: str, dst: str) -> None:
        svol, sin, _ = self.resolve(src, "src")
        dvol, din, _ = self.resolve(dst, "dst")
        if svol is dvol:
            return svol.mv(sin, din)
        # across volumes: copy text and vectors (no re-embedding), then remove the source
        files = [e for e in svol.ls(sin, recursive=True) if e["type"] == "file"] if svol.stat(sin)["type"] == "dir" \
            else [svol.stat(sin)]
        for entry in files:
            rel = entry["path"][len(sin):] if entry["path"] != sin else ""
            rows = svol.db.execute("SELECT start, end, text, vector FROM chunks WHERE path=? ORDER BY seq",
                                   (entry["path"],)).fetchall()
            chunks = [StoredChunk(s, e, t) for s, e, t, _v in rows]
            vectors = np.stack([np.frombuffer(v, np.float32) for *_x, v in rows]) if rows else \
                np.zeros((0, dvol.embedder.dim), np.float32)
            dvol.write((din.rstrip("/") + rel) or "/", svol.cat(entry["path"]), embedded=(chunks, vectors))
        svol.rm(sin, recursive=True)

    def rm(self, path: str, recursive: bool = False) -> int:
        vol, inner, point = self.resolve(path)
        if point != "/" and inner == "/" and not recursive:
            raise MemPathError(f"{path} is a volume: remove its contents with -r", param="path")
        return vol.rm(inner, recursive)

    def find(self, query: str, within: str = "/", k: int = 5, priority: Any = "high") -> list[dict[str, Any]]:
        if not isinstance(query, str) or not query.strip():
            raise InvalidRequestError("the search query is empty", param="query")
        if not isinstance(k, int) or not 1 <= k <= 1000:
            raise InvalidRequestError("k must be between 1 and 1000", param="k")
        within = normalize(within, param="within")
        targets = [self.resolve(within, "within")]
        if within == "/":  # search every volume and merge
            targets = [(self._volume(n), "/", p) for n, p in self.mounts().items()]
        vector = self._embedder.embed([query], priority=priority)[0]  # a user is waiting: ahead of imports
        hits = []
        for vol, inner, point in targets:
            hits += [self._fix(h, point) for h in vol.find(query, inner, k, vector=vector)]
        return sorted(hits, key=lambda h: -h["score"])[:k]

    def grep(self, pattern: str, within: str = "/", ignore_case: bool = False,
             timeout: float = GREP_TIMEOUT_S) -> list[dict[str, Any]]:
        """Lines matching `pattern` under `within`; past `timeout` seconds (all volumes together) the
        pattern is refused (Volume.grep)."""
        within = normalize(within, param="within")
        targets = [(self._volume(n), "/", p) for n, p in self.mounts().items()] if within == "/" \
            else [self.resolve(within, "within")]
        deadline, out = time.monotonic() + timeout, []
        for vol, inner, point in targets:
            hits = vol.grep(pattern, inner, ignore_case, timeout=timeout, deadline=deadline)
            out += [self._fix(h, point) for h in hits]
        return out

    def import_dir(self, source: str | Path, to: str, progress: Callable[[int, int], None] | None = None,
                   batch_files: int = 64, *, hidden: bool = False, max_bytes: int | None = None) -> dict[str, Any]:
        """Import text files from disk: SOURCE/a/b.txt becomes TO/a/b.txt. Symlinks out of SOURCE,
        hidden files (unless `hidden`), files over `max_bytes` (default: the configured
        mem_import_max_bytes), binary and non-UTF-8 files are left out and listed in the report:
        {"imported": N, "skipped": [{"path", "reason"}, ...], "to": TO}."""
        src = Path(source).expanduser()
        if not src.is_dir():
            raise InvalidRequestError(f"{src} is not a directory", param="source")
        to = normalize(to, param="to")
        limit = self.import_max_bytes if max_bytes is None else max_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequestError(f"max_bytes must be a positive number of bytes, got {limit!r}", param="max_bytes")
        files, skipped = scan(src, hidden=hidden)
        expect = getattr(self.resolve(to)[0].embedder, "expect_bulk", None) if files else None
        if expect is not None:  # an "auto" embedder may load a faster backend for a large import
            expect(len(files))
        done = seen = 0
        for start in range(0, len(files), batch_files):
            batch = []
            for f in files[start:start + batch_files]:
                try:
                    dest = normalize(f"{to.rstrip('/')}/{'/'.join(f.rel)}")
                    batch.append((f, dest, read_text(f, limit)))
                except (Skip, MemPathError) as exc:
                    skipped.append({"path": str(f.path), "reason": str(exc)})
            seen += len(files[start:start + batch_files]) - len(batch)
            if not batch:
                continue
            vol, _, _ = self.resolve(to)
            prepared = batch_prepare(vol.embedder, [t for _f, _d, t in batch])
            groups: dict[str, tuple[Volume, list]] = {}  # a batch may reach into a volume mounted below `to`
            for (f, dest, text), emb in zip(batch, prepared):
                dvol, inner, point = self.resolve(dest)
                if point != "/" and inner == "/":
                    skipped.append({"path": str(f.path), "reason": f"{dest} is a volume's root directory"})
                    continue
                groups.setdefault(dvol.name, (dvol, []))[1].append((f, FileWrite(inner, text, source=str(f.path),
                                                                                  embedded=emb)))
            for dvol, entries in groups.values():  # one transaction per volume and batch
                for (f, _w), result in zip(entries, dvol.write_many([w for _f, w in entries])):
                    if isinstance(result, Exception):  # e.g. a directory where a file already is
                        skipped.append({"path": str(f.path), "reason": str(result)})
                    else:
                        done += 1
            seen += len(batch)
            if progress:
                progress(seen, len(files))
        return {"imported": done, "skipped": skipped, "to": to}

    # -- snapshots (per volume; kernel/memfs/snapshots.py) -------------------------------------------

    def snapshot(self, volume: str, name: str | None = None) -> dict[str, Any]:
        """Take a copy-on-write snapshot of `volume` (named by the time when `name` is None)."""
        return {"volume": volume, **self._mounted(volume).snapshot(name)}

    def snapshots(self, volume: str | None = None) -> list[dict[str, Any]]:
        """The snapshots of one volume, or of every volume, oldest first."""
        names = [volume] if volume is not None else list(self.mounts())
        return [{"volume": n, **s} for n in names for s in self._mounted(n).snapshots()]

    def rollback(self, volume: str, name: str) -> dict[str, Any]:
        """Make `volume` what it was at snapshot `name`."""
        return {"volume": volume, **self._mounted(volume).rollback(name)}

    def delete_snapshot(self, volume: str, name: str) -> None:
        self._mounted(volume).delete_snapshot(name)

    def _mounted(self, volume: str) -> Volume:
        if not isinstance(volume, str) or volume not in self.mounts():
            raise VolumeNotFoundError(f"no volume named {volume!r} (see `llmos mem volumes`)", param="volume")
        return self._volume(volume)

    def fsck(self, repair: bool = False) -> list[dict[str, Any]]:
        out = []
        for name in self.mounts():
            vol = self._volume(name)
            report = vol.reconcile(repair=repair)
            notices = list(vol.notices)
            if name == "root":
                notices += [f"mounts.json was found corrupt and set aside as {f.name}; the mounts were rebuilt "
                            f"from the volume directories (delete it once inspected)"
                            for f in sorted(self.root.glob(CORRUPT_PREFIX + "*"))]
            out.append({"volume": name, **report, "notices": notices,
                        "consistent": report["missing"] == 0 and report["orphaned"] == 0})
        return out

    def close(self) -> None:
        with self._lock:
            for vol in self._volumes.values():
                vol.close()
            self._volumes.clear()

    @classmethod
    def _fix(cls, entry: dict[str, Any], point: str) -> dict[str, Any]:
        return {**entry, "path": cls._outer(point, entry["path"])}


CORRUPT_PREFIX = "mounts.json.corrupt-"


class VolumeNotFoundError(MemNotFoundError, LookupError):
    code = "volume_not_found"


def _parse_mounts(raw: bytes) -> dict[str, str]:
    """The volumes of a mounts.json (ValueError naming the problem when it is not a valid table)."""
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for name, point in data.items():
        if not name.isidentifier() or name == "root" or point != f"/{name}":
            raise ValueError(f"bad entry {name!r}: {point!r}")
    return data
