"""Thin, typed helpers over llama-cpp-python's low-level (ctypes) API.

Boundaries: this module is the only place that touches `llama_cpp.llama_cpp` pointers for model,
context, vocab, batch and sampler objects; drivers/llamacpp.py composes them into a driver. It is
imported lazily (only when the llama.cpp driver loads a model).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import json
import logging
import threading
from typing import Any, Callable, Sequence, TypeVar

import llama_cpp
import llama_cpp._logger as llama_logger
from llama_cpp import llama_cpp as C
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llmos.kernel.errors import InvalidRequestError, ModelLoadError
from llmos.kernel.sched.request import SamplingParams

from . import json_grammar

T = TypeVar("T")

_log = logging.getLogger("llmos.llamacpp")


#: what llama.cpp logs as errors when an AbortSwitch ends a step (GGML_STATUS_ABORTED, llama_decode's 2)
_ABORT_LINES = ("compute status: 1", "ret = 2", "failed with error 1")


@C.llama_log_callback
def _route_log(level: int, text: bytes, _user: Any) -> None:
    """llama.cpp/ggml messages go to Python logging ("llmos.llamacpp"), not straight to stderr."""
    # ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation; model-file warnings are noise here
    line = text.decode("utf-8", "replace").rstrip()
    error = level == 4 and not any(s in line for s in _ABORT_LINES)  # an abort asked for is no error
    _log.log(logging.ERROR if error else logging.DEBUG, "%s", line)


llama_logger.set_verbose(False)
C.llama_log_set(_route_log, ctypes.c_void_p(0))


@functools.lru_cache(maxsize=1)
def backend_init() -> None:
    C.llama_backend_init()


_device = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmos-llamacpp")


def on_device(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run llama.cpp compute on the one process-wide llama.cpp thread.

    ggml's OpenMP keeps a thread team per calling thread; with more teams than cores libgomp stops
    spinning and every graph pays futex wake-ups (decode speed fell ~2.5x here). One compute thread
    per process keeps one team, whatever number of models or kernels is loaded.
    """
    if threading.current_thread().name.startswith("llmos-llamacpp"):
        return fn(*args, **kwargs)
    return _device.submit(fn, *args, **kwargs).result()


def gpu_offload() -> bool:
    return bool(C.llama_supports_gpu_offload())


@functools.lru_cache(maxsize=1)
def engine_version() -> str:
    """llama-cpp-python's and llama.cpp's versions, and the sequence-state format's."""
    return (f"llama-cpp-python {llama_cpp.__version__}, llama.cpp {C.llama_version().decode()}, "
            f"state v{C.LLAMA_STATE_SEQ_VERSION}")


class DecodeAborted(Exception):
    """llama_decode returned 2: the abort switch was pulled (the ubatch it was computing is not kept)."""


class AbortSwitch:
    """Ends a running llama_decode early, from any thread, when more urgent work arrives.

    The abort callback ggml's compute threads poll between graph nodes is libc's `strlen` over a 2-byte
    flag: read in C, it never takes the GIL (a Python callback would, hundreds of times per step). The
    switch works only while `arm(True)`: the driver arms it for steps whose rollback is exact (pure
    decodes, one ubatch, which llama.cpp removes from the KV cache when it aborts).
    """

    def __init__(self, ctx) -> None:
        self._flag = ctypes.create_string_buffer(2)  # b"\0": go on, b"\1": abort
        self._lock = threading.Lock()
        self._armed = False
        self.pulled = 0
        strlen = ctypes.CDLL(None).strlen
        self._callback = C.ggml_abort_callback(ctypes.cast(strlen, ctypes.c_void_p).value)  # kept alive here
        C.llama_set_abort_callback(ctx, self._callback, ctypes.cast(self._flag, ctypes.c_void_p))

    def arm(self, armed: bool) -> None:
        with self._lock:
            self._armed = armed
            self._flag[0] = b"\0"

    def pull(self) -> bool:
        """Abort the armed step in flight; False when none is (nothing happens then)."""
        with self._lock:
            if not self._armed:
                return False
            self._flag[0] = b"\1"
            self.pulled += 1
            return True


class LlamaModel:
    """A loaded GGUF model plus one multi-sequence context with a unified KV cache."""

    def __init__(
        self,
        path: str,
        *,
        n_ctx: int,
        n_batch: int,
        n_seq_max: int,
        n_threads: int,
        progress: Callable[[float], None] | None = None,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
    ) -> None:
        backend_init()
        mparams = C.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.main_gpu = main_gpu
        if progress is not None:
            def _cb(fraction: float, _user: Any) -> bool:
                progress(float(fraction))
                return True

            self._progress_cb = C.llama_progress_callback(_cb)  # keep a reference alive
            mparams.progress_callback = self._progress_cb
        self.model = C.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {path}: the file may be truncated or unsupported")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.n_ctx_train = int(C.llama_model_n_ctx_train(self.model))
        cparams = C.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = True  # sequences share cells, so seq_cp of a prefix costs nothing
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self.ctx = C.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            C.llama_model_free(self.model)
            raise ModelLoadError(f"llama.cpp could not create a context of {n_ctx} tokens for {path}")
        self.memory = C.llama_get_memory(self.ctx)
        #: what shapes a saved sequence state besides the weights: a state saved under other values is not
        #: restored into this context (drivers/session_kv.py)
        self.kv_layout = {"n_ctx": int(C.llama_n_ctx(self.ctx)), "type_k": int(cparams.type_k),
                          "type_v": int(cparams.type_v), "flash_attn": int(cparams.flash_attn_type),
                          "swa_full": bool(cparams.swa_full), "kv_unified": True,
                          "gpu_layers": int(mparams.n_gpu_layers), "llama_cpp": engine_version()}
        self.abort = AbortSwitch(self.ctx)
        self.n_ctx = int(C.llama_n_ctx(self.ctx))
        self.n_batch = n_batch
        self.n_vocab = int(C.llama_vocab_n_tokens(self.vocab))
        self.size_bytes = int(C.llama_model_size(self.model))
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self.eog_ids = frozenset(t for t in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, t))

    def close(self) -> None:
        if getattr(self, "ctx", None):
            C.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            C.llama_model_free(self.model)
            self.model = None

    # -- vocabulary ----------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        n_max = len(data) + 8
        buf = (C.llama_token * n_max)()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (C.llama_token * n_max)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of one token (cached; special tokens render empty unless asked)."""
        key = token if not special else -token - 1
        cached = self._pieces.get(key)
        if cached is not None:
            return cached
        n = C.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, big, -n, 0, special)
            data = big.raw[:n]
        else:
            data = self._piece_buf.raw[:n]
        self._pieces[key] = data
        return data

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(65536)
        n = C.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_formatter(self) -> Jinja2ChatFormatter | None:
        template = self.meta("tokenizer.chat_template")
        if not template:
            return None
        bos = self.piece(C.llama_vocab_bos(self.vocab), special=True).decode("utf-8", "replace")
        eos = self.piece(C.llama_vocab_eos(self.vocab), special=True).decode("utf-8", "replace")
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    @property
    def bos_text(self) -> str:
        bos = C.llama_vocab_bos(self.vocab)
        return self.piece(bos, special=True).decode("utf-8", "replace") if bos >= 0 else ""

    # -- LoRA adapters -------------------------------------------------------------------------

    def lora_init(self, path: str) -> Any:
        """Load a GGUF LoRA for this model; None when llama.cpp refuses it (wrong base, corrupt)."""
        return C.llama_adapter_lora_init(self.model, path.encode()) or None

    def set_lora(self, adapter: Any) -> None:
        """Apply one adapter (scale 1) to the whole context, or none."""
        if adapter is None:
            rc = C.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            ptrs = (C.llama_adapter_lora_p_ctypes * 1)(adapter)
            rc = C.llama_set_adapters_lora(self.ctx, ptrs, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed with code {rc}")

    @staticmethod
    def lora_free(adapter: Any) -> None:
        C.llama_adapter_lora_free(adapter)

    # -- KV cache ------------------------------------------------------------------------------

    def seq_rm(self, seq: int, p0: int = 0, p1: int = -1) -> None:
        C.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        C.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_state(self, seq: int) -> bytes:
        """The KV state of one sequence (its cells and positions), as llama.cpp serializes it."""
        size = C.llama_state_seq_get_size_ext(self.ctx, seq, 0)
        buf = (ctypes.c_uint8 * size)()
        written = C.llama_state_seq_get_data_ext(self.ctx, buf, size, seq, 0)
        return ctypes.string_at(buf, written)

    def set_seq_state(self, seq: int, data: bytes) -> bool:
        """Restore a state from `seq_state` into sequence `seq` (emptied first); False if llama.cpp refused it."""
        self.seq_rm(seq, 0, -1)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if C.llama_state_seq_set_data_ext(self.ctx, buf, len(data), seq, 0) == 0:
            self.seq_rm(seq, 0, -1)
            return False
        return True

    def clear(self) -> None:
        C.llama_memory_clear(self.memory, True)

    def token_logprobs(self, rows: Sequence[tuple[int, int]]) -> list[float]:
        """log p(token | context) for each (batch row that had logits, token) of the last decode."""
        import numpy as np

        logits = np.stack([np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
                           for idx, _ in rows])
        top = logits.max(axis=1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        return (logits[np.arange(len(rows)), [t for _, t in rows]] - lse).astype(float).tolist()


class Batch:
    """A reusable llama_batch of up to `capacity` tokens, one sequence id per token."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = C.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        i = self.n
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.n = i + 1
        return i

    def decode(self, model: LlamaModel) -> int:
        self.batch.n_tokens = self.n
        return int(C.llama_decode(model.ctx, self.batch))

    def free(self) -> None:
        if self.batch is not None:
            C.llama_batch_free(self.batch)
            self.batch = None


class Sampler:
    """A per-sequence llama.cpp sampler chain built from SamplingParams (grammar first, when the
    output must match a JSON schema)."""

    PENALTY_LAST_N = 64  # tokens the repetition penalty looks back over (Ollama's repeat_last_n)

    def __init__(self, params: SamplingParams, history: Sequence[int] = (), *, model: "LlamaModel | None" = None,
                 generated: Sequence[int] = ()) -> None:
        params = params.with_defaults()  # the kernel fills every field; a direct caller may not
        # the grammar first: a schema that cannot be compiled raises before anything is allocated
        gbnf = json_schema_grammar(params.json_schema) if params.json_schema is not None else None
        self.chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        add = functools.partial(C.llama_sampler_chain_add, self.chain)
        if gbnf is not None:
            grammar = C.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
            if not grammar:
                C.llama_sampler_free(self.chain)
                raise InvalidRequestError("llama.cpp could not compile a grammar from this JSON schema",
                                          param="json_schema")
            for token in generated:  # a resumed sequence: bring the grammar to where it was
                C.llama_sampler_accept(grammar, token)
            add(grammar)
        if params.repetition_penalty != 1.0:
            penalties = _penalties(model.n_vocab, self.PENALTY_LAST_N, params.repetition_penalty)
            for token in history[-self.PENALTY_LAST_N:]:
                C.llama_sampler_accept(penalties, token)
            add(penalties)
        if params.greedy:
            add(C.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(C.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(C.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(C.llama_sampler_init_min_p(params.min_p, 1))
            add(C.llama_sampler_init_temp(params.temperature))
            add(C.llama_sampler_init_dist(llama_seed(params.seed)))

    def sample(self, model: LlamaModel, index: int) -> int:
        return int(C.llama_sampler_sample(self.chain, model.ctx, index))

    def free(self) -> None:
        if self.chain is not None:
            C.llama_sampler_free(self.chain)
            self.chain = None


def llama_seed(seed: int | None) -> int:
    """llama.cpp's 32-bit seed for a request's seed: 0xFFFFFFFF (LLAMA_DEFAULT_SEED) means "random" to
    llama.cpp, so a set seed maps into 0..0xFFFFFFFE and stays reproducible; unset stays random."""
    return C.LLAMA_DEFAULT_SEED if seed is None else seed % C.LLAMA_DEFAULT_SEED


def _penalties(n_vocab: int, last_n: int, repeat: float) -> Any:
    """llama.cpp's repetition penalty sampler (CTRL-style, over the last `last_n` tokens). Its signature
    depends on the build: upstream llama.cpp takes (last_n, repeat, freq, present), some
    llama-cpp-python builds (0.3.36) take n_vocab first."""
    init = C.llama_sampler_init_penalties
    args = (last_n, repeat, 0.0, 0.0)
    return init(n_vocab, *args) if len(init.argtypes) == 5 else init(*args)


@functools.lru_cache(maxsize=64)
def _checked_grammar(schema_json: str) -> str:
    grammar = json_grammar.grammar_for(schema_json)
    backend_init()
    parsed = C.llama_sampler_init_grammar(None, grammar.encode(), b"root")  # llama.cpp's parser, no vocab
    if not parsed:
        raise InvalidRequestError("json_schema: llama.cpp's grammar parser refused the grammar built from this "
                                  "schema (it printed why on stderr)", param="json_schema")
    C.llama_sampler_free(parsed)
    return grammar


def json_schema_grammar(schema: dict) -> str:
    """GBNF grammar for JSON values matching `schema`, bounded (drivers/json_grammar.py) and accepted by
    llama.cpp's parser; cached. Raises InvalidRequestError(param="json_schema") naming the problem."""
    return _checked_grammar(json.dumps(schema))  # keys in order: output properties come as the schema lists them


__all__ = ["LlamaModel", "Batch", "Sampler", "backend_init", "gpu_offload", "json_schema_grammar", "llama_cpp"]
