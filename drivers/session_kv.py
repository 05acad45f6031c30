"""Saved KV of chat sessions: a sequence's llama.cpp state on disk, kept across restarts.

At the end of a chat session's turn the driver saves the KV of its sequence (prompt and answer) under the
session's key (`NewSequence.cache_key`: a SHA-256 of the owner and session id, never a client's text); the
session's next turn, also in a new process after a restart, restores it and computes only the new message.
One file per session under `$LLMOS_HOME/kv/`, `<key>.kv`, replaced at each turn (a temporary file, fsynced,
renamed over the old one):

    b"LLMOSKV1" | header length (4 bytes, big endian) | header (JSON) | state

The header holds the fingerprint of what produced the state (the model file's SHA-256, the adapter's name
and file SHA-256, the context settings that shape the KV, the llama.cpp version), the tokens the state
covers, and the state's length and SHA-256. A state is used only when every fingerprint field equals the
loaded model's and its tokens are a prefix of the new prompt. Another model or setting, a file cut short
or altered, llama.cpp refusing the state: the turn is recomputed from scratch with one log line saying
why, and the file is removed. Never a wrong answer.

Bounds: a state larger than the per-file cap is not saved; past the disk budget the least recently used files
(by mtime: a restore touches its file) are removed. Files are written by one background thread, off the
decode loop; `forget(keys)` (a deleted session) removes a file and keeps a pending write from bringing it
back. File hashes are cached by path, size and mtime in `hashes.json`, so a load does not rehash the model.

Boundaries: pure Python over bytes and files; the driver makes the llama.cpp calls (llamacpp_sessions.py).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from llmos.kernel.lib.atomic import atomic_write_text, fsync_dir

from .base import common_prefix
from .llamacpp_swap import _unlink

log = logging.getLogger("llmos.llamacpp")

MAGIC = b"LLMOSKV1"
_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 8 << 20  # tokens of the longest context, as JSON, fit well within this
_KEY = re.compile(r"[0-9a-f]{64}")
_LOCK = threading.Lock()  # a write's rename and forget's unlink never interleave (any driver of this process)
_FORGOTTEN: set[str] = set()  # keys of deleted sessions: a pending write of theirs is not renamed into place


def session_file(directory: Path, key: str) -> Path:
    if not _KEY.fullmatch(key):
        raise ValueError(f"not a session KV key: {key[:80]!r}")
    return directory / f"{key}.kv"


def forget(directory: Path, keys: Iterable[str]) -> int:
    """Remove the saved KV of deleted sessions (and any write of theirs still pending); how many files went."""
    removed = 0
    with _LOCK:
        for key in keys:
            _FORGOTTEN.add(key)
            try:
                session_file(directory, key).unlink()
                removed += 1
            except (OSError, ValueError):
                pass
    return removed


class SessionKV:
    """The saved states of one driver instance's sessions (its fingerprint: `base` plus the adapter's)."""

    def __init__(self, directory: Path | None, disk_bytes: int, file_bytes: int, base: dict[str, Any] | None = None
                 ) -> None:
        self.dir, self.disk_bytes = directory, disk_bytes if directory is not None else 0
        self.file_bytes = min(file_bytes or self.disk_bytes, self.disk_bytes)
        self.base = dict(base or {})
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: dict[str, tuple[dict, list[int], bytes]] = {}  # key -> what the writer is to write
        self._lock = threading.Lock()
        self.saved = self.restored = self.tokens_restored = self.recomputed = self.evicted = self.skipped = 0
        self.disk_used = self._files()[1] if self.enabled else 0

    @property
    def enabled(self) -> bool:
        return self.disk_bytes > 0

    def fingerprint(self, adapter: str | None, adapter_sha256: str | None) -> dict[str, Any]:
        return {**self.base, "adapter": adapter, "adapter_sha256": adapter_sha256}

    # -- saving (the end of a turn) ------------------------------------------------------------------

    def save(self, key: str, fingerprint: dict[str, Any], tokens: Sequence[int], state: bytes) -> bool:
        """Queue `state` (covering `tokens`) as `key`'s saved KV; False when it is not kept (too large). The
        hashing and writing happen on the writer thread."""
        if not self.enabled or not state or not _KEY.fullmatch(key):
            return False
        if len(state) > self.file_bytes:
            self.skipped += 1
            log.info("session KV of %d tokens (%d MiB) is over the per-file cap (kv_session_file_mb): not saved",
                     len(tokens), len(state) >> 20)
            return False
        with self._lock:
            queued = key in self._pending
            self._pending[key] = (fingerprint, list(tokens), state)  # a newer turn's replaces a write not yet done
            if self._writer is None:
                self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llmos-session-kv")
            if not queued:
                self._writer.submit(self._write, key)
        return True

    def _write(self, key: str) -> None:
        with self._lock:
            fingerprint, tokens, state = self._pending.pop(key)
        header = json.dumps({"fingerprint": fingerprint, "tokens": tokens, "nbytes": len(state),
                             "sha256": hashlib.sha256(state).hexdigest()}).encode()
        path, tmp = session_file(self.dir, key), None
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=self.dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + _LENGTH.pack(len(header)) + header)
                fh.write(state)
                fh.flush()
                os.fsync(fh.fileno())
            with _LOCK:
                if key in _FORGOTTEN:  # the session was deleted meanwhile
                    os.unlink(tmp)
                    return
                os.replace(tmp, path)
            fsync_dir(self.dir)
        except OSError as exc:
            log.warning("session KV: could not write %s (%s): the next turn recomputes", path, exc)
            _unlink(None if tmp is None else Path(tmp))
            return
        self.saved += 1
        self._trim(keep=path)

    def _files(self) -> tuple[list[tuple[int, int, Path]], int]:
        """The saved files as (mtime_ns, size, path), least recently used first, and their total size."""
        files = []
        for f in self.dir.glob("*.kv"):
            try:
                st = f.stat()
            except OSError:
                continue  # removed by another process meanwhile
            files.append((st.st_mtime_ns, st.st_size, f))
        return sorted(files, key=lambda x: x[0]), sum(size for _, size, _ in files)

    def _trim(self, keep: Path) -> None:
        """Remove the least recently used files until the folder is within the disk budget."""
        files, total = self._files()
        for _mtime, size, f in files:
            if total <= self.disk_bytes:
                break
            if f == keep:
                continue
            _unlink(f)
            total -= size
            self.evicted += 1
        self.disk_used = total

    def flush(self) -> None:
        """Wait for the writes queued so far (before an unload, and in tests)."""
        with self._lock:
            writer = self._writer
        if writer is not None:
            writer.submit(lambda: None).result()

    def close(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    # -- restoring (the next turn) -------------------------------------------------------------------

    def restore(self, key: str, fingerprint: dict[str, Any], tokens: Sequence[int], limit: int,
                worth: Callable[[int, int], bool]) -> tuple[bytes, int, int] | None:
        """(state, tokens it covers, tokens of `tokens` it gives, at most `limit`) for `key`, when
        `worth(tokens it gives, bytes of its state)` says restoring beats recomputing (asked before the
        state is read); None otherwise: no file, a match not worth it (not logged), or a file that is
        unusable (logged, removed: the turn recomputes)."""
        if not self.enabled or not _KEY.fullmatch(key):
            return None
        path = session_file(self.dir, key)
        try:
            with open(path, "rb") as fh:
                header = _read_header(fh)
                if header is None:
                    return self._unusable(path, "its header is damaged")
                n = min(common_prefix(header["tokens"], tokens), limit)
                if not worth(n, header["nbytes"]):
                    return None
                stale = sorted(k for k in fingerprint.keys() | header["fingerprint"].keys()
                               if fingerprint.get(k) != header["fingerprint"].get(k))
                if stale:
                    return self._unusable(path, f"it was saved under another {', '.join(stale)}")
                state = fh.read(header["nbytes"] + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._unusable(path, f"it is unreadable ({exc})")
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file does, the turn recomputes (never the batch fails)
            return self._unusable(path, f"reading it failed ({type(exc).__name__}: {exc})")
        if len(state) != header["nbytes"] or hashlib.sha256(state).hexdigest() != header["sha256"]:
            return self._unusable(path, f"it is damaged ({len(state)} of {header['nbytes']} bytes, or altered)")
        try:
            os.utime(path)  # recently used: the last to go past the disk budget
        except OSError:
            pass
        self.restored += 1
        self.tokens_restored += n
        return state, len(header["tokens"]), n

    def refused(self, key: str) -> None:
        """llama.cpp did not take a state `restore` gave (restore counted it): recompute, drop the file."""
        self.restored -= 1
        self._unusable(session_file(self.dir, key), "llama.cpp refused its state")

    def _unusable(self, path: Path, why: str) -> None:
        log.warning("session KV %s not used: %s; recomputing the session's context", path.name, why)
        _unlink(path)
        self.recomputed += 1
        return None

    def stats(self) -> dict[str, int]:
        return {"session_kv_saved": self.saved, "session_kv_restored": self.restored,
                "session_kv_tokens_restored": self.tokens_restored, "session_kv_recomputed": self.recomputed,
                "session_kv_evicted": self.evicted, "session_kv_skipped": self.skipped,
                "session_kv_disk_bytes": self.disk_used}


def _read_header(fh) -> dict[str, Any] | None:
    """The header of an open session file, or None when it is not one (or is cut short or garbled)."""
    lead = fh.read(len(MAGIC) + _LENGTH.size)
    if len(lead) != len(MAGIC) + _LENGTH.size or not lead.startswith(MAGIC):
        return None
    (size,) = _LENGTH.unpack(lead[len(MAGIC):])
    if size > MAX_HEADER_BYTES:
        return None
    try:
        header = json.loads(fh.read(size))
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    ok = (isinstance(header, dict) and isinstance(header.get("fingerprint"), dict)
          and isinstance(header.get("tokens"), list) and isinstance(header.get("nbytes"), int)
          and isinstance(header.get("sha256"), str))
    if not ok or not all(type(t) is int for t in header["tokens"]):
        return None
    left = os.fstat(fh.fileno()).st_size - fh.tell()  # a claimed size past the file is a damaged header, not a read
    return header if 0 <= header["nbytes"] <= left else None


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256, this process's


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """The SHA-256 of a file, cached by path, size and mtime (in `cache_dir`/hashes.json across processes)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _HASHES:
        return _HASHES[key]
    cache = cache_dir / "hashes.json" if cache_dir is not None else None
    stored: dict[str, Any] = {}
    if cache is not None:
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
    row = stored.get(key[0]) if isinstance(stored, dict) else None
    if isinstance(row, dict) and row.get("size") == st.st_size and row.get("mtime_ns") == st.st_mtime_ns \
            and isinstance(row.get("sha256"), str):
        digest = row["sha256"]
    else:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if cache is not None:
            stored = stored if isinstance(stored, dict) else {}
            stored[key[0]] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            try:
                cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write_text(cache, json.dumps(stored, indent=1))
            except OSError as exc:
                log.warning("could not cache the hash of %s in %s: %s", path, cache, exc)
    _HASHES[key] = digest
    return digest
