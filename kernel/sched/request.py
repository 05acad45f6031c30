"""A request's data: what is asked (prompt, sampling), who asks (owner, priority, deadline) and
where it stands (status, tokens, metrics).

Pure data with validation on construction. The scheduler mutates `Request` objects it owns; drivers
never see them (they get the dataclasses in `sched/interface.py`).
"""

from __future__ import annotations

import enum
import json
import math
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from ..errors import InvalidRequestError

#: largest number of new tokens one request may ask for
MAX_TOKENS_LIMIT = 32768


class RequestStatus(enum.IntEnum):
    """Ordered lifecycle: every status after PREEMPTED is terminal."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_CANCELLED = 5
    FINISHED_FAILED = 6
    FINISHED_TIMED_OUT = 7

    @property
    def finished(self) -> bool:
        return self > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> str | None:
        """OpenAI-style reason ("stop", "length", ...) or None while not finished."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_CANCELLED: "cancelled",
    RequestStatus.FINISHED_FAILED: "error",
    RequestStatus.FINISHED_TIMED_OUT: "timeout",
}


class Priority(enum.IntEnum):
    """Priority classes; a lower value is served first and may preempt higher values."""

    REALTIME = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BATCH = 4

    @classmethod
    def parse(cls, value: "Priority | int | str") -> "Priority":
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(p.name.lower() for p in cls)
        raise InvalidRequestError(
            f"priority must be one of {names} (or 0-{len(cls) - 1}), got {value!r}", param="priority"
        )


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", param=name)
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name} must be between {lo} and {hi}, got {value}", param=name)


#: the sampling fields a model may give defaults for (`[models.NAME]` keys in llmos.toml)
MODEL_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
#: the defaults of a model whose table and file say nothing: Ollama's (temperature 0.8, top_k 40,
#: top_p 0.9, repeat_penalty 1.1); greedy decoding loops on small models ("1.1.1.1...")
BUILTIN_SAMPLING: dict[str, Any] = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.0,
                                    "repetition_penalty": 1.1}
#: what a request that asks for temperature 0 gets for the fields it leaves unset: plain greedy decoding
_GREEDY: dict[str, Any] = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


#: the largest seed (OpenAI's is an int64; torch refuses seeds of 2**64 and more inside a step)
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; validated on construction (InvalidRequestError names the field).

    A field left None takes the model's default when the kernel queues the request
    (`with_defaults`): local drivers always see every field set."""

    max_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    #: constrain the output to JSON matching this JSON schema (grammar-constrained decoding)
    json_schema: dict[str, Any] | None = None
    #: also return the log-probability of every prompt token after the first, given those before it
    #: (perplexity, scoring: `llmos eval`); the prompt is then computed whole, never from the prefix cache
    prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise InvalidRequestError(
                f"max_tokens must be an integer, got {self.max_tokens!r}", param="max_tokens"
            )
        if not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidRequestError(
                f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {self.max_tokens}",
                param="max_tokens",
            )
        for name, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0), ("min_p", 0.0, 1.0),
                             ("repetition_penalty", 0.01, 10.0)):
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name), lo, hi)
        if self.top_p == 0.0:
            raise InvalidRequestError("top_p must be greater than 0", param="top_p")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 0):
            raise InvalidRequestError(
                f"top_k must be a non-negative integer (0 disables it), got {self.top_k!r}",
                param="top_k",
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if any(not isinstance(s, str) or not s for s in stop) or len(stop) > 16:
            raise InvalidRequestError(
                "stop must be up to 16 non-empty strings", param="stop"
            )
        object.__setattr__(self, "stop", stop)
        if self.json_schema is not None:
            if not isinstance(self.json_schema, dict):
                raise InvalidRequestError("json_schema must be a JSON schema object", param="json_schema")
            try:
                json.dumps(self.json_schema)
            except (TypeError, ValueError, RecursionError) as exc:
                raise InvalidRequestError(f"json_schema is not JSON: {exc}", param="json_schema") from None
        if not isinstance(self.prompt_logprobs, bool):
            raise InvalidRequestError(f"prompt_logprobs must be true or false, got {self.prompt_logprobs!r}",
                                      param="prompt_logprobs")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED
        ):
            raise InvalidRequestError(
                f"seed must be an integer from 0 to 2**63-1, got {self.seed!r}", param="seed"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_defaults(self, defaults: Mapping[str, Any] = BUILTIN_SAMPLING) -> "SamplingParams":
        """These parameters with unset fields filled: what the request sets always wins; a request
        that sets temperature 0 is plain greedy decoding (no penalty, no filters) unless it sets them
        itself; otherwise unset fields take the model's `defaults` (a field they lack stays unset:
        a remote node then applies its own)."""
        base = defaults if self.temperature != 0.0 else _GREEDY
        return replace(self, **{k: base[k] for k in MODEL_SAMPLING_KEYS if getattr(self, k) is None and k in base})


_VALID_ROLES = {"system", "user", "assistant", "tool"}


def validate_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check chat messages (role + string content) and return them as a list of plain dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidRequestError("messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _VALID_ROLES:
            raise InvalidRequestError(
                f"messages[{i}] needs a role among {sorted(_VALID_ROLES)}", param="messages"
            )
        if not isinstance(m.get("content"), str):
            raise InvalidRequestError(
                f"messages[{i}].content must be a string", param="messages"
            )
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(f"messages[{i}].content is not valid UTF-8 text ({exc.reason} at {exc.start})",
                                      param="messages") from None
        out.append(dict(m))
    if not any(m["content"].strip() for m in out):
        raise InvalidRequestError("messages are all empty: say something", param="messages")
    return out


def check_prompt(prompt: Any, *, param: str = "prompt", allow_empty: bool = False) -> None:
    """A prompt is a non-empty string of valid UTF-8 text."""
    if not isinstance(prompt, str):
        raise InvalidRequestError(f"{param} must be a string, got {type(prompt).__name__}", param=param)
    if not allow_empty and not prompt.strip():
        raise InvalidRequestError(f"{param} is empty: give some text", param=param)
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{param} is not valid UTF-8 text ({exc.reason} at {exc.start})",
                                  param=param) from None


def parse_sampling(sampling: Mapping[str, Any]) -> "SamplingParams":
    """`SamplingParams` from keyword arguments; an unknown key is refused by name."""
    unknown = set(sampling) - set(SamplingParams.__dataclass_fields__)
    if unknown:
        raise InvalidRequestError(f"unknown parameter(s) {sorted(unknown)}", param=sorted(unknown)[0])
    return SamplingParams(**sampling)


def check_timeout(timeout: Any) -> None:
    """None, or a positive number of seconds."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise InvalidRequestError(f"timeout must be a positive number of seconds, got {timeout!r}", param="timeout")


#: at most this many memfs passages in one request's prompt (`rag_k`)
MAX_RAG_PASSAGES = 32


def check_rag_k(rag_k: Any) -> None:
    if isinstance(rag_k, bool) or not isinstance(rag_k, int) or not 1 <= rag_k <= MAX_RAG_PASSAGES:
        raise InvalidRequestError(f"rag_k (how many passages at most) must be an integer from 1 to "
                                  f"{MAX_RAG_PASSAGES}, got {rag_k!r}", param="rag_k")


def check_input(prompt: Any, messages: Sequence[dict[str, Any]] | None, timeout: Any,
                system_prompt: str | None = None) -> list[dict[str, Any]] | None:
    """Check a request's prompt or messages (exactly one) and timeout; returns the checked messages
    (with `system_prompt` first when they bring no system message of their own), or None for a prompt."""
    if (prompt is None) == (messages is None):
        raise InvalidRequestError("give either a prompt or messages (exactly one)", param="prompt")
    check_timeout(timeout)
    if prompt is not None:
        check_prompt(prompt)
        return None
    chat = validate_messages(messages)
    if system_prompt and not any(m["role"] == "system" for m in chat):
        chat.insert(0, {"role": "system", "content": system_prompt})
    return chat


@dataclass
class PromptEnvelope:
    """What the prepare_prompt hook sees and may rewrite: the prompt text or chat messages."""

    text: str | None
    messages: list[dict[str, Any]] | None
    model: str
    owner: str
    adapter: str | None = None


@dataclass
class RequestMetrics:
    """Timestamps (time.monotonic) and derived figures of one request."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    preemptions: int = 0

    @property
    def queue_wait(self) -> float | None:
        return None if self.first_scheduled is None else self.first_scheduled - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed after the first token (None until two tokens exist)."""
        if self.first_token is None or self.output_tokens < 2:
            return None
        end = self.finished if self.finished is not None else time.monotonic()
        span = end - self.first_token
        return (self.output_tokens - 1) / span if span > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_wait_s": self.queue_wait,
            "ttft_s": self.ttft,
            "tokens_per_s": self.tokens_per_second,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "output_tokens": self.output_tokens,
            "preemptions": self.preemptions,
        }


def next_request_id() -> str:
    """A fresh request id, unguessable (64 random bits): over HTTP an id is enough to kill a request."""
    return f"req-{secrets.token_hex(8)}"


@dataclass(eq=False)
class Request:
    """One inference request as the scheduler tracks it.

    `prompt_token_ids` is filled by the kernel (the driver's tokenizer) before the request reaches
    the scheduler. `output_token_ids` grows as tokens are sampled; `num_computed_tokens` counts the
    tokens (prompt + output) whose KV the driver holds.
    """

    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    model: str = ""
    adapter: str | None = None
    #: the adapter cannot share a step with other adapters or the base model (driver/method limits)
    exclusive_adapter: bool = False
    priority: Priority = Priority.NORMAL
    owner: str = "default"
    user: str | None = None  # a free label inside the owner (OpenAI's `user`): shown, never trusted
    deadline: float | None = None  # absolute time.monotonic()
    request_id: str = field(default_factory=next_request_id)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    sources: list[str] = field(default_factory=list)  # memfs paths given to the model (RAG)
    cache_key: str | None = None  # the chat session's key its KV may be saved under (NewSequence.cache_key)
    cache_salt: str | None = None  # whose prefix KV it may reuse (NewSequence.cache_salt)
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    output_text: str = ""
    num_computed_tokens: int = 0
    error: str | None = None
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    #: position -> log-probability of prompt token `position` (with sampling.prompt_logprobs)
    prompt_logprobs: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.priority = Priority.parse(self.priority)
        if not self.prompt_token_ids:
            raise InvalidRequestError("prompt is empty: give some text", param="prompt")
        if not isinstance(self.owner, str) or not self.owner:
            raise InvalidRequestError("owner must be a non-empty string", param="owner")
        self.metrics.prompt_tokens = len(self.prompt_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        return self.status.finished
