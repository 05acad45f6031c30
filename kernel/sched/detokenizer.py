"""Incremental detokenization: turn one sampled token at a time into text deltas.

Two strategies, both exact across multi-byte UTF-8 characters split over tokens:
- `ByteDetokenizer` for tokenizers that map each token to raw bytes (llama.cpp's token_to_piece);
- `DecodeDetokenizer` for tokenizers that only decode id lists (Hugging Face), decoding a small
  sliding window so spacing rules that depend on the previous token stay right.
"""

from __future__ import annotations

import codecs
from typing import Callable, Protocol, Sequence


class Detokenizer(Protocol):
    def add(self, token_id: int) -> str:
        """Feed one token; return the text it completes (may be empty)."""


class ByteDetokenizer:
    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        return self._decoder.decode(self._token_bytes(token_id))


class DecodeDetokenizer:
    #: prompt tokens kept as context so the first output token decodes with correct spacing
    CONTEXT = 4

    def __init__(self, decode: Callable[[Sequence[int]], str], prompt_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids = list(prompt_ids[-self.CONTEXT :])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""
