"""The driver contract: how the kernel runs a model on a device.

A driver class declares what it can do as class attributes (`name`, `formats`, `supports_lora`),
says whether it can run here (`probe()`), and an instance serves one model: `load()` ->
`execute(SchedulerOutput) -> DriverOutput` (one engine step, any number of sequences) -> `unload()`.

Drivers own tokenization and per-sequence device state (KV cache, samplers). They never decide
what runs: the scheduler does. They are registered through the `register_drivers` plugin hook; the
built-in ones ship that way too (plugins/builtin.py). Engine libraries (torch, llama_cpp) are
imported lazily inside the driver modules, never by the kernel.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from llmos.kernel.errors import DriverUnavailableError
from llmos.kernel.sched.detokenizer import DecodeDetokenizer, Detokenizer
from llmos.kernel.sched.interface import DriverOutput, SchedulerOutput
from llmos.kernel.models.registry import ModelSpec

#: called with a fraction in [0, 1] while a model loads
ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class ProbeResult:
    available: bool
    devices: tuple[str, ...] = ()
    reason: str = ""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share (prefix caches match prompts with it)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class DriverOptions:
    """Resource knobs the kernel passes to a driver instance (from Config)."""

    n_threads: int = 1
    max_seqs: int = 16
    n_ctx: int = 8192
    max_batched_tokens: int = 512
    prefix_cache: bool = True
    kv_swap_bytes: int = 0  # RAM for the KV of evicted sequences (llama.cpp); 0: none, they recompute
    kv_swap_disk_bytes: int = 0  # past that, spilled to extra["swap_dir"], up to this many bytes
    #: chat sessions' KV kept on disk across restarts under extra["kv_dir"] (NewSequence.cache_key); 0: off
    kv_session_disk_bytes: int = 0
    kv_session_file_bytes: int = 0  # a session's KV larger than this is not saved
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """What the kernel needs to know about a loaded model."""

    context_length: int  # longest sequence (prompt + output) one request may have
    kv_capacity: int  # KV cells shared by all sequences of this instance
    max_seqs: int  # sequences decoded together
    eos_token_ids: frozenset[int]
    vocab_size: int
    device: str
    has_chat_template: bool
    memory_bytes: int


class Driver(abc.ABC):
    #: short name used in config, CLI (--driver) and ps
    name: ClassVar[str]
    #: model formats this driver loads ("gguf", "hf")
    formats: ClassVar[frozenset[str]]
    supports_lora: ClassVar[bool] = False
    #: rows of one step may use different adapters (else the scheduler groups steps by adapter)
    #: drivers naming the same group share one compute resource; their engines take turns by urgency
    #: (kernel/sched/gate.py). None: the driver has its own (a remote server, a dedicated device).
    compute_group: ClassVar[str | None] = None
    mixed_adapters: ClassVar[bool] = False
    #: output can be constrained to a JSON schema (SamplingParams.json_schema)
    supports_json_schema: ClassVar[bool] = False
    #: can return prompt tokens' log-probabilities (SamplingParams.prompt_logprobs)
    supports_prompt_logprobs: ClassVar[bool] = False
    #: a running sequence can be dropped and recomputed later (False: its generation cannot resume)
    preemptible: ClassVar[bool] = True
    #: adapter methods (manifest `method`) that can share a step with others when mixed_adapters
    mixable_methods: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: ModelSpec, options: DriverOptions) -> None:
        self.spec = spec
        self.options = options
        self.info: ModelInfo | None = None

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> ProbeResult:
        """Can this driver run here, and on which devices? Must be cheap and never raise."""

    @classmethod
    def check_json_schema(cls, schema: dict[str, Any]) -> None:
        """Refuse, with InvalidRequestError(param="json_schema") naming the problem, a schema this driver
        cannot constrain output to. Called at submit, so a bad schema never reaches a step; the default
        accepts any (a driver that forwards the schema lets the other side judge it)."""
        return None

    @abc.abstractmethod
    def load(self, progress: ProgressCallback | None = None) -> ModelInfo:
        """Load the model; raise ModelLoadError/ModelFormatError with a message naming the fix."""

    @abc.abstractmethod
    def execute(self, batch: SchedulerOutput) -> DriverOutput:
        """Release `batch.released`, then compute `batch.num_scheduled_tokens` and sample."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Free the model and all device memory; the instance may be `load()`ed again."""

    @abc.abstractmethod
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Text to token ids (special tokens written in the text are parsed)."""

    @abc.abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids to text."""

    @abc.abstractmethod
    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        """Render chat messages with the model's template, ending with the assistant's turn."""

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Chat messages to the token ids of a prompt that ends with the assistant's turn."""
        return self.tokenize(self.apply_chat_template(messages), add_special=False)

    def detokenizer(self, prompt_ids: Sequence[int]) -> Detokenizer:
        """A fresh incremental detokenizer for one request."""
        return DecodeDetokenizer(self.decode, prompt_ids)

    def load_adapter(self, name: str, path: Path) -> int:
        """Load adapter `name` from `path` (called between steps); returns the bytes it occupies."""
        raise DriverUnavailableError(f"the {self.name} driver does not load adapters")

    def unload_adapter(self, name: str) -> None:
        """Unload adapter `name` (called between steps, when no running request uses it)."""
        raise DriverUnavailableError(f"the {self.name} driver does not load adapters")

    def stats(self) -> dict[str, Any]:
        """Driver-specific figures for ps/top (slots in use, prefix cache hits, ...)."""
        return {}

    def swapped(self) -> dict[str, dict[str, Any]]:
        """Request id -> {"where": "ram" | "disk", "bytes": n} for the sequences whose KV the driver has
        swapped out (a preempted request's, kept to resume it without recomputing); ps shows it."""
        return {}
