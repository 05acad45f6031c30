"""Slots and the prefix cache of the llama.cpp driver (a mixin of `LlamaCppDriver`).

Each running request owns a llama.cpp sequence id (slot); a finished sequence's slot keeps its KV as
a cache entry that a new sequence sharing its prefix copies (`seq_cp`) or takes over. Eviction takes
the entry of the least urgent request first, the least recently used among equals: a batch tenant's
churn of new prompts does not push an interactive tenant's prompt out of the cache. Boundaries:
these methods use the driver's `_model`, `_seqs`, `_cache`, `_swap`, `_free`, `options` and prefix counters,
and run on the llama.cpp thread like the rest of a step. A chat session's KV saved on disk is restored and
saved through the session methods (llamacpp_sessions.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.sched.interface import DriverOutput, NewSequence, SchedulerOutput

from .base import common_prefix

#: a same-step donor must beat resident KV by this many tokens to split the step in two phases
MIN_PHASE_GAIN = 16


@dataclass
class SeqState:
    request_id: str
    slot: int
    tokens: list[int]
    n_past: int  # tokens whose KV is in the cache for this slot
    sched_pos: int  # tokens the scheduler believes are computed
    sampler: Any
    adapter: str | None = None
    priority: int = 2  # the request's Priority value
    cache_key: str | None = None  # the chat session's (NewSequence.cache_key): its KV is saved when it ends
    salt: str | None = None  # whose prompts (NewSequence.cache_salt): its KV is reused only by the same salt
    scored: int = 0  # prompt_logprobs: the prompt's length (positions 1..scored-1 are scored); 0: none


@dataclass
class CacheEntry:
    """The KV a finished sequence left in its slot."""

    adapter: str | None
    tokens: list[int]
    priority: int  # of the request that computed it: less urgent entries are evicted first
    request_id: str = ""  # whose KV it is (a preempted request comes back for it)
    salt: str | None = None  # reused only by sequences with the same NewSequence.cache_salt


class SlotCache:
    def _place(self, new: NewSequence, out: DriverOutput, donor: SeqState | None = None) -> None:
        from .llamacpp_lib import Sampler

        model = self._model
        tokens = list(new.token_ids)
        try:  # first: a sampler that cannot be built fails this sequence alone, before it takes a slot
            sampler = Sampler(new.sampling, tokens, model=model,
                              generated=tokens[new.prompt_len:] if new.prompt_len else ())
        except InvalidRequestError as exc:
            out.failed[new.request_id] = str(exc)
            return
        scored = (new.prompt_len or len(tokens)) if new.sampling.prompt_logprobs else 0
        # the last prompt token is always computed, for its logits; a scored prompt is computed whole
        limit = 0 if scored else len(tokens) - 1
        reuse, src_slot, cached_slot = 0, None, None
        if self.options.prefix_cache:  # KV computed under another adapter, or for another tenant, is not reused
            mine = (new.adapter, new.cache_salt)
            candidates = [(s.tokens[: s.n_past], s.slot, False) for s in self._seqs.values()
                          if (s.adapter, s.salt) == mine]
            candidates += [(e.tokens, slot, True) for slot, e in self._cache.items() if (e.adapter, e.salt) == mine]
            if donor is not None:
                candidates = [(donor.tokens[: donor.n_past], donor.slot, False)]
            for toks, slot, is_cached in candidates:
                n = min(common_prefix(toks, tokens), limit)
                if n > reuse:
                    reuse, src_slot, cached_slot = n, slot, slot if is_cached else None
        # a longer prefix in the swap area, or in the session's saved KV: restore it instead of recomputing
        restore = self._swap_candidate(tokens, new.adapter, new.cache_salt, limit, reuse) or \
            self._session_candidate(new, tokens, limit, reuse)
        if restore is not None:
            state, covered, n, session_key = restore
            slot, reuse = self._take_slot(), 0
            self._ensure_kv_room(covered)
            started = time.perf_counter()
            if model.set_seq_state(slot, state):
                reuse = n
                model.seq_rm(slot, reuse, -1)
                if session_key is None:
                    self._swap.restored(time.perf_counter() - started)
                else:
                    self._session_restored(state, covered, time.perf_counter() - started)
            elif session_key is not None:
                self._session_kv.refused(session_key)
        elif cached_slot is not None:
            slot = cached_slot  # take over the cache entry's slot, cut its KV after the prefix
            del self._cache[slot]
            model.seq_rm(slot, reuse, -1)
        else:
            slot = self._take_slot()
            model.seq_rm(slot, 0, -1)
            if reuse:
                model.seq_cp(src_slot, slot, 0, reuse)
        if reuse:
            self.prefix_hits += 1
            self.prefix_tokens_reused += reuse
            out.cached_tokens[new.request_id] = reuse
        self._seqs[new.request_id] = SeqState(new.request_id, slot, tokens, reuse, 0, sampler, new.adapter,
                                              new.priority, new.cache_key, new.cache_salt, scored)

    def _swap_candidate(self, tokens: list[int], adapter: str | None, salt: str | None, limit: int, reuse: int):
        """(state, tokens it covers, tokens to reuse, None) taken out of the swap area when it holds a prefix
        of `tokens` longer than `reuse` by enough to beat recomputing the difference (llamacpp_swap.py)."""
        swap = self._swap
        if not swap.enabled or not self.options.prefix_cache:
            return None
        key, n = swap.match(tokens, adapter, salt)
        n = min(n, limit)
        if key is None or not swap.wants(n - reuse, key):
            return None
        taken = swap.take(key)
        return None if taken is None else (taken[1], len(taken[0].tokens), n, None)

    def _same_step_donor(self, new: NewSequence, batch: SchedulerOutput) -> str | None:
        """Another new sequence of this step worth waiting for (it computes a long shared prefix)."""
        if not self.options.prefix_cache or new.sampling.prompt_logprobs:
            return None
        resident = [s.tokens[: s.n_past] for s in self._seqs.values() if s.adapter == new.adapter]
        resident += [e.tokens for e in self._cache.values() if e.adapter == new.adapter]
        best_resident = max((common_prefix(t, new.token_ids) for t in resident), default=0)
        for other in batch.new:
            if other.request_id == new.request_id:
                break
            if other.adapter != new.adapter:
                continue
            shared = min(common_prefix(other.token_ids, new.token_ids),
                         batch.num_scheduled_tokens.get(other.request_id, 0), len(new.token_ids) - 1)
            if shared >= best_resident + MIN_PHASE_GAIN and other.request_id in self._seqs:
                return other.request_id
        return None

    def _take_slot(self) -> int:
        if not self._free:
            self._evict_cache(1)
        if not self._free:
            raise RuntimeError("no free llama.cpp sequence slot: more sequences than max_seqs")
        return self._free.pop()

    def _release(self, rid: str, finished: bool = False) -> None:
        seq = self._seqs.pop(rid, None)
        if seq is None:
            return
        seq.sampler.free()
        if finished:  # the end of a turn: a chat session's KV is saved for its next one
            self._save_session(seq)
        if self.options.prefix_cache and seq.n_past > 0:
            self._cache[seq.slot] = CacheEntry(seq.adapter, seq.tokens[: seq.n_past], seq.priority, rid, seq.salt)
            self._cache.move_to_end(seq.slot)
        else:
            self._model.seq_rm(seq.slot, 0, -1)
            self._free.append(seq.slot)

    def _evict_cache(self, count: int) -> None:
        """Free `count` cache entries: the least urgent first, least recently used among equals."""
        for _ in range(min(count, len(self._cache))):
            least_urgent = max(e.priority for e in self._cache.values())
            slot = next(s for s, e in self._cache.items() if e.priority == least_urgent)  # in LRU order
            entry = self._cache.pop(slot)
            if self._swap.wants(len(entry.tokens)):  # worth keeping: to RAM (or disk) instead of lost
                self._swap.put(entry.adapter, entry.tokens, entry.priority, self._model.seq_state(slot),
                               entry.request_id, entry.salt)
            self._model.seq_rm(slot, 0, -1)
            self._free.append(slot)

    def _ensure_kv_room(self, incoming: int) -> None:
        """Evict cached prefixes (LRU) while the KV cells in use plus `incoming` exceed the context."""
        def used() -> int:
            return sum(s.n_past for s in self._seqs.values()) + sum(len(e.tokens) for e in self._cache.values())

        while self._cache and used() + incoming > self._model.n_ctx:
            self._evict_cache(1)
