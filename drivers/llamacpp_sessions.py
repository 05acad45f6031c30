"""Chat sessions' saved KV in the llama.cpp driver (a mixin of `LlamaCppDriver`; the store: session_kv.py).

A sequence that belongs to a chat session (`NewSequence.cache_key`) and ends normally has its KV saved
when it is released, under the session's key; a new sequence of that session restores it when reading
the whole saved state back is expected to beat recomputing the tokens it gives beyond what the prefix
cache (or the swap area) holds -- the swap area's measured cost model decides (`SwapCosts`, "disk"),
and each restore measures it again -- and computes only the rest. Boundaries: these methods use the
driver's `_model`, `_session_kv`, `_swap` (its costs), `_adapter_paths` and `options`, and run on the
llama.cpp thread like the rest of a step (the file is written off it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmos.kernel.sched.interface import NewSequence

from .llamacpp_slots import SeqState
from .llamacpp_swap import MIN_SWAP_TOKENS
from .session_kv import SessionKV, file_sha256


class SessionSaves:
    def _open_session_kv(self, model_path: Path, kv_layout: dict[str, Any]) -> SessionKV:
        """The store of this load: off without a disk budget; else keyed by the model file's hash."""
        opts = self.options
        directory = opts.extra.get("kv_dir")
        if directory is None or not opts.kv_session_disk_bytes:
            return SessionKV(None, 0, 0)
        base = {"model_sha256": file_sha256(model_path, Path(directory)), **kv_layout}
        return SessionKV(Path(directory), opts.kv_session_disk_bytes, opts.kv_session_file_bytes, base)

    def _fingerprint(self, adapter: str | None) -> dict[str, Any]:
        path = self._adapter_paths.get(adapter) if adapter is not None else None
        store = self._session_kv
        return store.fingerprint(adapter, None if path is None else file_sha256(path, store.dir))

    def _session_candidate(self, new: NewSequence, tokens: list[int], limit: int, reuse: int):
        """(state, tokens it covers, tokens to reuse, key) from the session's saved KV, when restoring it
        beats recomputing what it gives beyond `reuse`; None otherwise (an unusable file is logged and
        recomputed)."""
        store = self._session_kv
        if new.cache_key is None or not store.enabled or not self.options.prefix_cache:
            return None
        costs = self._swap.costs

        def worth(n: int, nbytes: int) -> bool:
            return costs.worth_it(n - reuse, nbytes, "disk")

        started = time.perf_counter()
        found = store.restore(new.cache_key, self._fingerprint(new.adapter), tokens, limit, worth)
        self._session_read_s = time.perf_counter() - started
        return None if found is None else (*found, new.cache_key)

    def _session_restored(self, state: bytes, covered: int, seconds: float) -> None:
        """A saved session state is back in llama.cpp after `seconds`: the whole restore (read, checksum,
        set_data) measures the disk restore speed the next decision uses."""
        self._swap.costs.restored("disk", len(state), covered, self._session_read_s + seconds)

    def _save_session(self, seq: SeqState) -> None:
        """At the end of a session's turn: its KV (prompt and answer) to disk, replacing the last turn's."""
        store = self._session_kv
        if seq.cache_key is None or not store.enabled or not self.options.prefix_cache or seq.n_past < MIN_SWAP_TOKENS:
            return
        store.save(seq.cache_key, self._fingerprint(seq.adapter), seq.tokens[: seq.n_past],
                   self._model.seq_state(seq.slot))
