"""Prefix reuse for the torch driver: the KV of finished prompts, kept so a later prompt that starts
with the same tokens (a shared system prompt, the earlier turns of a chat) computes only the rest.

Boundaries: owns the entries and their byte budget; knows nothing of batches or the scheduler. The
driver `remember`s a prompt's private cache the moment its prefill completes (before the cache joins
the shared batch) and asks `lookup` when it admits a sequence. Entries hold references to the
cache's tensors, not copies: DynamicCache.update and the batch's joins build new tensors (torch.cat),
so nothing writes into a remembered tensor, and a lookup hands out slices that the new sequence's
own updates again replace. Entries are keyed by adapter (KV computed under another adapter is not
reusable) and by the tenant's salt (NewSequence.cache_salt: one tenant's prompts never serve, nor
reveal themselves to, another), dropped when that adapter is unloaded or replaced; evicted least
recently used past the byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache

from .base import common_prefix

#: prompts shorter than this are not worth an entry (recomputing them costs about one decode step)
MIN_PREFIX_TOKENS = 32


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    offset: int  # virtual tokens ahead of the prompt (prefix tuning)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (1, heads, offset + len(tokens), dim)
    nbytes: int


class PrefixStore:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        # keyed by (adapter, tokens, salt): KV is reused only under the same adapter, for the same tenant
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...], str | None], _Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.tokens_reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, adapter: str | None, tokens: Sequence[int], offset: int, cache: DynamicCache,
                 salt: str | None = None) -> None:
        """Keep the KV of a completed prompt (`cache` holds exactly offset + len(tokens) positions)."""
        if self.budget <= 0 or len(tokens) < MIN_PREFIX_TOKENS:
            return
        key = (adapter, tuple(tokens), salt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.budget:
            return
        # a prompt that extends a kept one makes it redundant: the longer entry serves both
        for old in [k for k in self._entries if (k[0], k[2]) == (adapter, salt) and len(k[1]) < len(tokens)
                    and tuple(tokens[: len(k[1])]) == k[1]]:
            self._drop(old)
        self._entries[key] = _Entry(key[1], offset, kv, nbytes)
        self.bytes += nbytes
        while self.bytes > self.budget:
            self._drop(next(iter(self._entries)))

    def lookup(self, adapter: str | None, tokens: Sequence[int], limit: int,
               salt: str | None = None) -> tuple[int, DynamicCache | None]:
        """(n, cache): a fresh cache holding the KV of the first n tokens of `tokens` (n <= limit), or
        (0, None) when no entry shares at least MIN_PREFIX_TOKENS with them."""
        best, best_key = 0, None
        for key, entry in self._entries.items():
            if (key[0], key[2]) != (adapter, salt):
                continue
            n = min(common_prefix(entry.tokens, tokens), limit)
            if n > best:
                best, best_key = n, key
        if best < MIN_PREFIX_TOKENS or best_key is None:
            return 0, None
        entry = self._entries[best_key]
        self._entries.move_to_end(best_key)
        cache = DynamicCache()
        end = entry.offset + best
        for i, (k, v) in enumerate(entry.kv):
            cache.update(k[:, :, :end], v[:, :, :end], i)
        self.hits += 1
        self.tokens_reused += best
        return best, cache

    def forget(self, adapter: str | None = None, *, everything: bool = False) -> None:
        """Drop the entries computed under `adapter` (or all of them)."""
        for key in [k for k in self._entries if everything or k[0] == adapter]:
            self._drop(key)

    def _drop(self, key) -> None:
        self.bytes -= self._entries.pop(key).nbytes
