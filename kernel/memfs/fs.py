"""memfs: retrieval memory as a filesystem of volumes mounted into one namespace.

`$LLMOS_HOME/memfs/` holds one directory per volume and `mounts.json`. The root volume is mounted at
`/`; `mount(NAME)` creates a volume mounted at `/NAME`, so `/NAME/...` lives in its own store. All
paths are validated (kernel/memfs/paths.py) and translated to volume-relative paths; results come
back as full paths. Volumes open lazily. The vector index and embedder are backends (drivers/),
imported only when a volume opens.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llmos.kernel.errors import InvalidRequestError

from .paths import MemPathError, normalize
from .volume import StoredChunk, Volume, batch_prepare

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".toml", ".yaml", ".yml", ".csv", ".html", ".org", ".tex",
                 ".c", ".h", ".js", ".ts", ".go", ".rs", ".java", ".sh", ".cfg", ".ini", ".log", ""}


def default_backends():
    """(embedder, index class): sentence-transformers + FAISS, from drivers/ (imported lazily; the
    model itself loads on first use)."""
    from llmos.drivers.embedder import SentenceEmbedder
    from llmos.drivers.memfs_index import VectorIndex

    return SentenceEmbedder(), VectorIndex


class MemFS:
    def __init__(self, root: Path, backends: Callable[[], tuple] = default_backends) -> None:
        self.root = root
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
        """volume name -> mount point."""
        data = json.loads(self._mounts_file.read_text()) if self._mounts_file.exists() else {}
        return {"root": "/", **data}

    def mount(self, name: str) -> str:
        """Create (or re-mount) volume `name` at /name."""
        if not name.isidentifier() or name == "root":
            raise InvalidRequestError(f"volume names are identifiers other than 'root', got {name!r}", param="name")
        with self._lock:
            mounts = {k: v for k, v in self.mounts().items() if k != "root"}
            mounts[name] = f"/{name}"
            tmp = self._mounts_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(mounts, indent=2))
            os.replace(tmp, self._mounts_file)
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

    def find(self, query: str, within: str = "/", k: int = 5) -> list[dict[str, Any]]:
        if not isinstance(query, str) or not query.strip():
            raise InvalidRequestError("the search query is empty", param="query")
        if not isinstance(k, int) or not 1 <= k <= 1000:
            raise InvalidRequestError("k must be between 1 and 1000", param="k")
        within = normalize(within, param="within")
        targets = [self.resolve(within, "within")]
        if within == "/":  # search every volume and merge
            targets = [(self._volume(n), "/", p) for n, p in self.mounts().items()]
        vector = self._embedder.embed([query], priority="high")[0]  # a user is waiting: ahead of imports
        hits = []
        for vol, inner, point in targets:
            hits += [self._fix(h, point) for h in vol.find(query, inner, k, vector=vector)]
        return sorted(hits, key=lambda h: -h["score"])[:k]

    def grep(self, pattern: str, within: str = "/", ignore_case: bool = False) -> list[dict[str, Any]]:
        within = normalize(within, param="within")
        targets = [(self._volume(n), "/", p) for n, p in self.mounts().items()] if within == "/" \
            else [self.resolve(within, "within")]
        return [self._fix(h, point) for vol, inner, point in targets for h in vol.grep(pattern, inner, ignore_case)]

    def import_dir(self, source: str | Path, to: str, progress: Callable[[int, int], None] | None = None,
                   batch_files: int = 64) -> dict[str, Any]:
        """Import text files from disk: SOURCE/a/b.txt becomes TO/a/b.txt (binary files are skipped)."""
        src = Path(source).expanduser()
        if not src.is_dir():
            raise InvalidRequestError(f"{src} is not a directory", param="source")
        to = normalize(to, param="to")
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        done, skipped = 0, []
        for start in range(0, len(files), batch_files):
            batch = []
            for f in files[start:start + batch_files]:
                try:
                    batch.append((f, f.read_text(encoding="utf-8")))
                except (UnicodeDecodeError, OSError) as exc:
                    skipped.append(f"{f}: {exc.__class__.__name__}")
            if not batch:
                continue
            vol, _, _ = self.resolve(to)
            prepared = batch_prepare(vol.embedder, [t for _f, t in batch])
            for (f, text), emb in zip(batch, prepared):
                rel = "/".join(f.relative_to(src).parts)
                self.write(f"{to.rstrip('/')}/{rel}", text, source=str(f), embedded=emb)
                done += 1
                if progress:
                    progress(done, len(files))
        return {"imported": done, "skipped": skipped, "to": to}

    def fsck(self, repair: bool = False) -> list[dict[str, Any]]:
        out = []
        for name in self.mounts():
            vol = self._volume(name)
            report = vol.reconcile(repair=repair)
            out.append({"volume": name, **report, "notices": list(vol.notices),
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
