"""KV cache management for the torch driver's continuous batching.

Decoding sequences share one left-padded batch cache (rows x heads x length x dim per layer) plus an
attention mask that marks padding. A sequence joins by padding it (or the batch) on the left to a
common length and concatenating rows; it leaves by dropping its row; when every row has leading
padding, the common padding is trimmed. Positions are passed explicitly per row, so padding never
shifts RoPE positions. Sequences still in prefill keep a private cache of their own.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    return DynamicCache()


def _tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _set(cache: DynamicCache, tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for layer, (k, v) in zip(cache.layers, tensors):
        layer.keys, layer.values = k, v


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = torch.zeros(t.shape[0], t.shape[1], n, t.shape[3], dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=2)


class PaddedBatch:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: list[str] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def __contains__(self, rid: str) -> bool:
        return rid in self.rows

    def row(self, rid: str) -> int:
        return self.rows.index(rid)

    def join(self, rid: str, cache: DynamicCache, n_tokens: int) -> None:
        """Add a sequence whose private cache holds `n_tokens` positions."""
        seq_mask = torch.ones(1, n_tokens, dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask, self.rows = cache, seq_mask, [rid]
            return
        target = max(self.length, n_tokens)
        grow, pad = target - self.length, target - n_tokens
        batch_kv = [(_left_pad(k, grow), _left_pad(v, grow)) for k, v in _tensors(self.cache)]
        seq_kv = [(_left_pad(k, pad), _left_pad(v, pad)) for k, v in _tensors(cache)]
        _set(self.cache, [(torch.cat([bk, sk]), torch.cat([bv, sv])) for (bk, bv), (sk, sv) in zip(batch_kv, seq_kv)])
        zeros = lambda rows, n: torch.zeros(rows, n, dtype=torch.long, device=self.device)  # noqa: E731
        self.mask = torch.cat([torch.cat([zeros(len(self.rows), grow), self.mask], 1),
                               torch.cat([zeros(1, pad), seq_mask], 1)])
        self.rows.append(rid)

    def leave(self, rids: set[str]) -> None:
        keep = [i for i, r in enumerate(self.rows) if r not in rids]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache = [], None
            self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
            return
        index = torch.tensor(keep, device=self.device)
        _set(self.cache, [(k.index_select(0, index), v.index_select(0, index)) for k, v in _tensors(self.cache)])
        self.mask = self.mask.index_select(0, index)
        self.rows = [self.rows[i] for i in keep]
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        real = self.mask.any(dim=0).nonzero()
        start = int(real[0]) if real.numel() else self.length
        if start:
            _set(self.cache, [(k[:, :, start:], v[:, :, start:]) for k, v in _tensors(self.cache)])
            self.mask = self.mask[:, start:]

    def step_mask(self, active: torch.Tensor) -> torch.Tensor:
        """The attention mask for one more position; `active` (rows,) is 1 where a real token is fed."""
        self.mask = torch.cat([self.mask, active.to(self.mask.dtype).unsqueeze(1)], dim=1)
        return self.mask
