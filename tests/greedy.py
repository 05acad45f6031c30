"""Checking greedy (temperature 0) outputs of the llama.cpp driver against an independent scorer.

llama.cpp's CPU kernels are not batch-invariant: the same prompt computed alone, in a batch with
other sequences, or after a reused prefix takes other kernel paths (flash-attention tiles, matmul row
blocking) whose float sums round differently, and the Q4/Q8 quantization of activations amplifies
that. Measured on SmolLM2-135M Q4_1 here: the logits of one prompt move by up to ~0.95 between
"alone" and "in a batch of 2..8", more under a strong LoRA adapter. Two greedy runs of one request
may therefore part where two tokens are that close; anything else is a bug (a sequence given
another's KV, a wrong adapter, a sampler that is not greedy).

So a greedy output is checked token by token: under a plain `llama_cpp.Llama` that computes the
prompt alone (`logits_all`), every generated token must be within `NOISE` of that position's top
logit. If logits move by at most d between two computations, a token that is top in one is within
2d of the top in the other. Measured worst margins of real greedy outputs: 0.38 on the base model,
2.25 under the test's LoRA adapter (scale 4); of mix-ups (another question's answer, the adapter's
answer scored without it): 6.85 and 18.4. NOISE = 3.0 sits between (tests check both sides).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: the largest gap (in logits) between the top token and a greedy token, from batch-shape noise alone
NOISE = 3.0


class GreedyScorer:
    """Scores token sequences with plain llama_cpp.Llama, on llmos's one llama.cpp thread."""

    def __init__(self, model_path: str, lora_path: str | None = None) -> None:
        from llama_cpp import Llama

        from llmos.drivers.llamacpp_lib import on_device

        self._on_device = on_device
        kw = {"lora_path": lora_path} if lora_path else {}
        self._llm = on_device(lambda: Llama(model_path=model_path, n_ctx=2048, verbose=False, logits_all=True, **kw))

    def logits(self, prompt: Sequence[int], tokens: Sequence[int] = ()) -> np.ndarray:
        """Row j: the logits for tokens[j] (row len(tokens): what would follow the last one)."""
        seq = list(prompt) + list(tokens)

        def run() -> np.ndarray:
            self._llm.reset()
            self._llm.eval(seq)
            return np.array(self._llm.scores[len(prompt) - 1: len(seq)], dtype=np.float32)

        return self._on_device(run)

    def margins(self, prompt: Sequence[int], tokens: Sequence[int]) -> list[float]:
        """For each generated token: how far below its position's top logit it is (0 = the top)."""
        rows = self.logits(prompt, tokens)
        return [float(rows[j].max() - rows[j][t]) for j, t in enumerate(tokens)]

    def assert_greedy(self, prompt: Sequence[int], tokens: Sequence[int], what: str = "output") -> None:
        """Every token is a greedy choice for this prompt, up to batch-shape noise."""
        margins = self.margins(prompt, tokens)
        worst = max(range(len(margins)), key=margins.__getitem__, default=None)
        assert worst is None or margins[worst] < NOISE, (
            f"{what}: token {worst} ({tokens[worst]}) is {margins[worst]:.2f} logits below the top: not a greedy "
            f"choice for this prompt (a mix-up, not float noise); margins {[round(m, 2) for m in margins]}")

    def assert_same_or_near_tie(self, prompt: Sequence[int], got: Sequence[int], want: Sequence[int]) -> None:
        """`got` equals `want`, or first parts from it where the two tokens were nearly tied."""
        got, want = list(got), list(want)
        if got == want:
            return
        i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        if i == min(len(got), len(want)):  # one stopped earlier: EOS was nearly tied with the other token
            return
        row = self.logits(prompt, want[:i])[i]
        gap = abs(float(row[got[i]]) - float(row[want[i]]))
        assert gap < NOISE, f"parted at token {i} with a logit gap of {gap:.3f}: not float noise"

    def close(self) -> None:
        self._on_device(self._llm.close)
