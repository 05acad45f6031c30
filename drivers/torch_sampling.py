"""Per-row sampling for the torch driver: each row of a logits batch has its own SamplingParams.

Order (as in transformers' logits processors): repetition penalty over the sequence so far, then
temperature, top-k, top-p, min-p, then a draw from the row's own seeded generator. Greedy rows take
the argmax of the penalized logits.
"""

from __future__ import annotations

from typing import Sequence

import torch

from llmos.kernel.sched.request import SamplingParams


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.greedy:
        return None
    gen = torch.Generator(device=device if device.type != "mps" else "cpu")
    gen.manual_seed(params.seed if params.seed is not None else torch.seed())
    return gen


def _penalize(logits: torch.Tensor, history: Sequence[int], penalty: float) -> torch.Tensor:
    if penalty == 1.0 or not history:
        return logits
    idx = torch.tensor(sorted(set(history)), device=logits.device)
    picked = logits[idx]
    logits = logits.clone()
    logits[idx] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits


def _filter(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > p.top_p  # keep the first token always
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if p.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[Sequence[int]],
                generators: Sequence[torch.Generator | None]) -> list[int]:
    """Sample one token per row of `logits` (rows x vocab)."""
    logits = logits.float()
    out = []
    for row, p, hist, gen in zip(logits, params, histories, generators):
        row = _penalize(row, hist, p.repetition_penalty)
        if p.greedy:
            out.append(int(torch.argmax(row)))
            continue
        probs = torch.softmax(_filter(row, p), dim=-1)
        if gen is not None and gen.device.type != probs.device.type:  # "cuda" vs "cuda:0" is the same place
            probs = probs.to(gen.device)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out
