"""Request bodies of the OpenAI-compatible API (pydantic), validated before anything reaches the kernel."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .sse import MAX_STREAM_INTERVAL_MS


#: texts per embeddings request, and characters per text (all-MiniLM-L6-v2 reads 256 tokens, ~1,000 characters)
MAX_EMBEDDING_INPUTS = 256
MAX_EMBEDDING_CHARS = 16_384


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> str:
        if isinstance(value, dict):  # lenient: an object instead of its JSON text
            return json.dumps(value)
        try:
            parsed = json.loads(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object as a string, like '{\"city\": \"Paris\"}'")
        return value


class ToolCall(BaseModel):
    """An assistant message's earlier tool call, as OpenAI clients send it back."""

    model_config = ConfigDict(extra="allow")
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image parts and the like: accepted, not read
    type: str = "text"
    text: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Optional[Union[str, list[ContentPart]]] = None
    tool_calls: Optional[list[ToolCall]] = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.text for p in self.content if p.text is not None)
        return self.content or ""


def check_trust(tenant, *, priority: Any = None, driver: str | None = None, audit=None) -> None:
    """What a tenant's class and rights allow: a priority up to its class (kernel/tenants/tenant.py), and a
    named driver only for an admin (it would load a second copy of a model on another engine). A refusal
    is a TenantDeniedError (403), reported to `audit(tenant, action, target, reason)` first."""
    from llmos.kernel.errors import TenantDeniedError

    audit = audit or (lambda *_args: None)
    try:
        tenant.priority(priority)
    except TenantDeniedError as exc:
        audit(tenant, "priority", str(priority)[:32], str(exc))
        raise
    if driver is not None and not tenant.admin:
        error = TenantDeniedError("choosing a driver needs an admin key (or the Unix socket): leave it out to use "
                                  "the model's own", param="driver")
        error.code = "admin_only"
        audit(tenant, "driver", driver, str(error))
        raise error


class RagOptions(BaseModel):
    """`rag` as an object: the memfs directory and how many passages (best first, one per file) at most."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is a 400, not a silent default

    path: str = Field(max_length=4096)
    k: int = Field(6, ge=1, le=32)


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None  # top_k, min_p, repetition_penalty: extensions, named as vLLM names them
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    n: int = 1
    user: Optional[str] = None
    #: an extension, as Ollama's: how long the model stays loaded once idle, from this request on
    #: (seconds or "5m"; 0 = unload right after it, negative = never)
    keep_alive: Optional[Union[float, str]] = None
    #: llmos extensions (what `llmos.connect()` clients send; docs/client.md): the priority class
    #: (at most the tenant's class), memfs passages under `rag` (a directory)
    #: to answer from, returned as `sources`, a driver to force, a deadline in seconds, and the chat session
    #: (the tenant's own, by name or id) the request is a turn of: its KV is saved for the next turn
    priority: Optional[Union[str, int]] = None
    session: Optional[str] = Field(None, min_length=1, max_length=200)
    rag: Optional[Union[str, RagOptions]] = None  # a directory, or {"path", "k"}
    driver: Optional[str] = Field(None, max_length=64)
    timeout: Optional[float] = Field(None, gt=0, le=86400)
    #: with stream=true: at most one chunk per this many milliseconds, joining the text decoded in
    #: between (a client that draws at 10-20 Hz, as `llmos shell` does, needs no more; 0 or unset: a
    #: chunk per token, as OpenAI streams). The first chunk and the last are never held back.
    stream_interval_ms: Optional[int] = Field(None, ge=0, le=MAX_STREAM_INTERVAL_MS, strict=True)  # as a Client checks
    ignore_eos: bool = False  # as vLLM names it: decode max_tokens whatever the model says (benchmarks)
    #: as vLLM's extension (a bool here): the log-probability of each prompt token after the first, in the
    #: response's `llmos.prompt_logprobs` (perplexity: `llmos eval`)
    prompt_logprobs: bool = False
    # OpenAI fields llmos does not implement: accepted at their "off" value (clients send those by
    # default), refused otherwise rather than silently ignored
    logprobs: Optional[Union[bool, int]] = None
    top_logprobs: Optional[int] = None
    logit_bias: Optional[dict[str, Any]] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None

    @field_validator("rag", mode="before")
    @classmethod
    def _rag(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and len(value) <= 4096):
            return value
        if isinstance(value, dict):
            try:
                return RagOptions.model_validate(value)
            except ValueError as exc:  # pydantic's ValidationError: name the key and the rule
                first = exc.errors()[0]  # type: ignore[attr-defined]
                raise ValueError(f"{'.'.join(map(str, first['loc'])) or 'rag'}: {first['msg']}") from None
        raise ValueError('must be a memfs directory (at most 4,096 characters) or {"path": DIRECTORY, "k": 1..32}')

    @field_validator("logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty")
    @classmethod
    def _not_implemented(cls, value: Any, info) -> Any:
        if value:  # None, False, 0, 0.0 and {} are "off"
            hint = " (repetition_penalty is supported)" if info.field_name.endswith("_penalty") else ""
            raise ValueError(f"is not supported by llmos yet: leave it unset{hint}")
        return value

    def extensions(self, tenant, header_priority: str | None = None, audit=None) -> dict[str, Any]:
        """The llmos extensions set, as `Kernel.submit` keywords (the priority: the body's, else the
        X-Llmos-Priority header's), checked against `tenant` (its class caps the priority)."""
        out = {k: getattr(self, k) for k in ("priority", "rag", "driver", "timeout", "session")
               if getattr(self, k) is not None}
        if isinstance(self.rag, RagOptions):
            out["rag"], out["rag_k"] = self.rag.path, self.rag.k
        if "priority" not in out and header_priority:
            out["priority"] = header_priority.strip()[:32]
        check_trust(tenant, priority=out.get("priority"), driver=out.get("driver"), audit=audit)
        if self.keep_alive is not None and not tenant.admin:  # how long the shared model stays loaded
            from llmos.kernel.errors import TenantDeniedError

            error = TenantDeniedError("keep_alive decides how long a model every tenant shares stays loaded: it "
                                      "needs an admin key", param="keep_alive")
            error.code = "admin_only"
            (audit or (lambda *_a: None))(tenant, "keep_alive", str(self.keep_alive)[:32], str(error))
            raise error
        return out

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if limit is not None:
            out["max_tokens"] = limit
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.seed is not None:
            out["seed"] = self.seed
        if self.ignore_eos:
            out["ignore_eos"] = True
        if self.prompt_logprobs:
            out["prompt_logprobs"] = True
        out.update({k: getattr(self, k) for k in ("top_k", "min_p", "repetition_penalty") if getattr(self, k) is not None})
        if self.stop is not None:
            out["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return out


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    response_format: Optional[dict[str, Any]] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1)
    input: Union[str, list[str]]
    user: Optional[str] = None
