"""The KV swap area of the llama.cpp driver: evicted prefix-cache entries, kept as llama.cpp sequence
state instead of thrown away.

When the driver needs a slot or KV cells, it evicts prefix-cache entries (llamacpp_slots.py), among
them the KV of a preempted request. An entry worth it (`SwapCosts`: restoring its bytes takes less
time than recomputing its tokens, by this driver's own measurements of both; until both are measured,
`MIN_SWAP_TOKENS`) is saved first with `llama_state_seq_get_data_ext` into RAM, up
to a byte budget; past it the least recently swapped entries spill to files under the spill folder, up
to a second budget; past that they are dropped. A new sequence whose tokens extend a swapped entry's
(a preempted request resuming, a prompt seen before) restores it with `llama_state_seq_set_data_ext`
instead of recomputing. Whatever cannot be restored (a file that is gone, cut short or altered: each
file carries a SHA-256 of its state) is recomputed, with a log line; never a wrong answer.

State is only valid for the context that produced it: the area is cleared when the model unloads, and
spill files are named per driver instance and removed with it. Boundaries: pure Python over bytes;
the driver does the llama.cpp calls, on its one compute thread.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llmos.kernel.lib.pids import pid_alive

from .base import common_prefix

log = logging.getLogger("llmos.llamacpp")

#: until SwapCosts has measured both sides, entries shorter than this are recomputed, not swapped
MIN_SWAP_TOKENS = 256
#: never swapped, whatever the measurements: recomputing this few tokens is about one decode step
FLOOR_SWAP_TOKENS = 32
#: compute steps of fewer tokens are decode-bound and say little about prefill speed
MIN_MEASURED_TOKENS = 64


class SwapCosts:
    """Swap-in against recompute, weighed with what this driver measured: its prefill throughput
    (tokens/s over steps of MIN_MEASURED_TOKENS or more) and its restore throughput (bytes/s, from RAM
    and from disk apart, reads and checks included), each a moving average; and the bytes a token's KV
    takes. A sequence is swapped in (and an entry swapped out) when restoring its bytes is expected to
    take less time than recomputing its tokens."""

    ALPHA = 0.3  # weight of the newest measurement

    def __init__(self) -> None:
        self.prefill_tps: float | None = None
        self.restore_bps: dict[str, float | None] = {"ram": None, "disk": None}
        self.bytes_per_token: float | None = None

    @staticmethod
    def _average(old: float | None, new: float) -> float:
        return new if old is None else old + SwapCosts.ALPHA * (new - old)

    def computed(self, tokens: int, seconds: float) -> None:
        if tokens >= MIN_MEASURED_TOKENS and seconds > 0:
            self.prefill_tps = self._average(self.prefill_tps, tokens / seconds)

    def restored(self, where: str, nbytes: int, tokens: int, seconds: float) -> None:
        if nbytes and seconds > 0:
            self.restore_bps[where] = self._average(self.restore_bps[where], nbytes / seconds)
        if tokens:
            self.bytes_per_token = nbytes / tokens

    def saved(self, nbytes: int, tokens: int) -> None:
        if tokens:
            self.bytes_per_token = nbytes / tokens

    def worth_it(self, tokens: int, nbytes: int | None = None, where: str = "ram") -> bool:
        """Restore `tokens` (held in `nbytes`; estimated when None) rather than recompute them?"""
        if tokens < FLOOR_SWAP_TOKENS:
            return False
        bps = self.restore_bps[where] or self.restore_bps["ram"]
        if nbytes is None and self.bytes_per_token is not None:
            nbytes = int(tokens * self.bytes_per_token)
        if self.prefill_tps is None or bps is None or nbytes is None:
            return tokens >= MIN_SWAP_TOKENS
        return nbytes / bps < tokens / self.prefill_tps


@dataclass
class Swapped:
    adapter: str | None
    tokens: list[int]
    priority: int
    nbytes: int
    data: bytes | None = None  # in RAM; None: spilled to `path`
    path: Path | None = None
    digest: str = ""
    request_id: str = ""  # whose KV it is
    salt: str | None = None  # restored only for sequences with the same NewSequence.cache_salt


class SwapArea:
    def __init__(self, ram_bytes: int, disk_bytes: int = 0, spill_dir: Path | None = None) -> None:
        self.ram_bytes, self.disk_bytes = ram_bytes, disk_bytes if spill_dir is not None else 0
        self._dir = spill_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}" if spill_dir is not None else None
        if spill_dir is not None and self.disk_bytes:
            _remove_dead(Path(spill_dir))
        self._entries: OrderedDict[int, Swapped] = OrderedDict()  # least recently swapped first
        self._ids = itertools.count()
        self.swapped_out = self.swapped_in = self.spilled = self.dropped = self.failed = 0
        self.costs = SwapCosts()
        self._taken: tuple[str, int, int, float] | None = None  # where, bytes, tokens, read seconds

    @property
    def enabled(self) -> bool:
        return self.ram_bytes > 0

    def used(self) -> tuple[int, int]:
        """(bytes in RAM, bytes on disk)."""
        ram = sum(e.nbytes for e in self._entries.values() if e.data is not None)
        return ram, sum(e.nbytes for e in self._entries.values() if e.data is None)

    def wants(self, n_tokens: int, key: int | None = None) -> bool:
        """Is restoring `n_tokens` (of entry `key`, when swapping in) expected to beat recomputing them?"""
        if not self.enabled:
            return False
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            return self.costs.worth_it(n_tokens)
        # the whole state is read and restored, whatever part of it the new sequence uses
        return self.costs.worth_it(n_tokens, entry.nbytes, "ram" if entry.data is not None else "disk")

    def put(self, adapter: str | None, tokens: list[int], priority: int, data: bytes, request_id: str = "",
            salt: str | None = None) -> None:
        """Keep a sequence's state; spill or drop the oldest entries to stay within the budgets."""
        if not data or len(data) > self.ram_bytes:
            self.dropped += 1
            return
        self.costs.saved(len(data), len(tokens))
        self._entries[next(self._ids)] = Swapped(adapter, list(tokens), priority, len(data), data,
                                                 digest=hashlib.sha256(data).hexdigest(), request_id=request_id, salt=salt)
        self.swapped_out += 1
        self._fit()

    def match(self, tokens: Sequence[int], adapter: str | None, salt: str | None = None) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with `tokens` (same adapter and salt), and that length."""
        best, best_n = None, 0
        for key, e in self._entries.items():
            if e.adapter != adapter or e.salt != salt:
                continue
            n = common_prefix(e.tokens, tokens)
            if n > best_n:
                best, best_n = key, n
        return best, best_n

    def take(self, key: int) -> tuple[Swapped, bytes] | None:
        """Remove an entry and return it with its state; None (logged) if a spilled file is unusable."""
        started = time.perf_counter()
        e = self._entries.pop(key)
        data = e.data
        if data is None:
            try:
                data = e.path.read_bytes()
            except OSError as exc:
                data = None
                log.warning("KV swap file %s unreadable (%s): recomputing", e.path, exc)
            finally:
                _unlink(e.path)
            if data is not None and (len(data) != e.nbytes or hashlib.sha256(data).hexdigest() != e.digest):
                log.warning("KV swap file %s is damaged (%d of %d bytes, or altered): recomputing",
                            e.path, len(data), e.nbytes)
                data = None
        if data is None:
            self.failed += 1
            return None
        self.swapped_in += 1
        self._taken = ("ram" if e.data is not None else "disk", e.nbytes, len(e.tokens), time.perf_counter() - started)
        return e, data

    def restored(self, seconds: float) -> None:
        """The state last taken is back in llama.cpp, after `seconds`: measure the whole restore."""
        if self._taken is not None:
            where, nbytes, tokens, read_s = self._taken
            self.costs.restored(where, nbytes, tokens, read_s + seconds)
            self._taken = None

    def by_request(self) -> dict[str, dict[str, object]]:
        """Request id -> where its swapped state is and its size (any thread: reads a copy)."""
        return {e.request_id: {"where": "ram" if e.data is not None else "disk", "bytes": e.nbytes}
                for e in list(self._entries.values()) if e.request_id}

    def discard_adapter(self, adapter: str) -> None:
        for key in [k for k, e in self._entries.items() if e.adapter == adapter]:
            self._drop(key)

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)
        if self._dir is not None:
            try:
                self._dir.rmdir()
            except OSError:
                pass

    def stats(self) -> dict[str, int | float | None]:
        ram, disk = self.used()
        c = self.costs
        return {"swap_entries": len(self._entries), "swap_ram_bytes": ram, "swap_disk_bytes": disk,
                "swapped_out": self.swapped_out, "swapped_in": self.swapped_in, "swap_spilled": self.spilled,
                "swap_dropped": self.dropped, "swap_failed": self.failed,
                "prefill_tokens_per_s": c.prefill_tps and round(c.prefill_tps, 1),
                **{f"swap_in_{k}_mb_per_s": v and round(v / 2**20, 1) for k, v in c.restore_bps.items()}}

    # -- internals -------------------------------------------------------------------------------

    def _fit(self) -> None:
        ram, disk = self.used()
        for key, e in list(self._entries.items()):  # oldest first
            if ram <= self.ram_bytes:
                break
            if e.data is None:
                continue
            ram -= e.nbytes
            if self._dir is not None and e.nbytes <= self.disk_bytes and self._spill(e):
                disk += e.nbytes
            else:
                self._drop(key)
        for key, e in list(self._entries.items()):
            if disk <= self.disk_bytes:
                break
            if e.data is None:
                disk -= e.nbytes
                self._drop(key)

    def _spill(self, e: Swapped) -> bool:
        path = self._dir / f"{uuid.uuid4().hex}.kv"
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_bytes(e.data)
        except OSError as exc:
            log.warning("KV swap: could not spill to %s (%s): dropping the entry", path, exc)
            _unlink(path)
            return False
        e.data, e.path = None, path
        self.spilled += 1
        return True

    def _drop(self, key: int) -> None:
        e = self._entries.pop(key)
        if e.path is not None and e.data is None:
            _unlink(e.path)
        self.dropped += 1


def _remove_dead(spill_dir: Path) -> None:
    """Spill folders of processes that are gone (a crash, kill -9): their files can never be read again."""
    for folder in spill_dir.glob("*-*"):
        pid = folder.name.split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        for f in folder.glob("*.kv"):
            _unlink(f)
        try:
            folder.rmdir()
        except OSError:
            pass


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except OSError:
            pass
