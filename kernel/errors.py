"""Typed errors of llmos.

Every error a user can cause is a subclass of `LlmosError` and its message says what to fix.
Callers (CLI, HTTP server, shell) map these to exit codes / status codes; nothing here knows
about those front ends.
"""

from __future__ import annotations


class LlmosError(Exception):
    """Base class of every error llmos raises on purpose."""

    #: short machine-readable code, stable across versions (used by the CLI --json and the HTTP API)
    code: str = "llmos_error"


class InvalidRequestError(LlmosError, ValueError):
    """A request or its sampling parameters are invalid; `param` names the offending field."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt plus the requested new tokens do not fit in the model's context window."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, context: int) -> None:
        super().__init__(
            f"prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}, but the model's "
            f"context window is {context} tokens: shorten the prompt or lower max_tokens",
            param="prompt",
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context = context


class QueueFullError(LlmosError):
    """The scheduler's waiting queue is at its cap; retry later or raise `max_queue`."""

    code = "queue_full"

    def __init__(self, limit: int, retry_after: float = 1.0) -> None:
        super().__init__(
            f"the kernel's waiting queue is full ({limit} requests): retry later, "
            f"or raise max_queue in llmos.toml"
        )
        self.limit = limit
        self.retry_after = retry_after


class UnknownModelError(LlmosError, LookupError):
    """A model name that the registry cannot resolve; lists what is available."""

    code = "model_not_found"

    def __init__(self, name: str, available: list[str], *, paths: bool = True) -> None:
        listing = ", ".join(available) if available else "(none)"
        hint = ", a path to a .gguf file, or a local Hugging Face model directory" if paths else ""
        super().__init__(f"unknown model {name!r}: use one of {listing}{hint}")
        self.name = name
        self.available = available


class ModelFormatError(LlmosError):
    """A file given as a model is not in a format llmos can load (e.g. not GGUF)."""

    code = "invalid_model_file"


class ModelLoadError(LlmosError):
    """A driver failed to load a model it accepted."""

    code = "model_load_failed"


class DriverUnavailableError(LlmosError):
    """The driver a model needs is not installed or cannot run on this machine."""

    code = "driver_unavailable"


class ConfigError(LlmosError):
    """`llmos.toml` or an LLMOS_* variable holds a value llmos cannot use."""

    code = "invalid_config"


class KernelShutdownError(LlmosError):
    """The kernel is shutting down or already shut down and accepts no new work."""

    code = "shutting_down"


class RequestFailedError(LlmosError):
    """A request ended in FINISHED_FAILED; carries the driver's error message."""

    code = "request_failed"


class RequestCancelledError(LlmosError):
    """A request was cancelled (by its owner, a kill or a client disconnect)."""

    code = "cancelled"


class RequestTimeoutError(LlmosError, TimeoutError):
    """A request passed its deadline before it finished."""

    code = "timed_out"


class UnknownAdapterError(LlmosError, LookupError):
    """An adapter (module) name that is not installed; lists what is."""

    code = "adapter_not_found"

    def __init__(self, name: str, available: list[str]) -> None:
        listing = ", ".join(available) if available else "none are installed"
        super().__init__(f"unknown adapter {name!r} ({listing}): install it with `llmos mod install`")
        self.name = name
        self.available = available


class AdapterConflictError(LlmosError):
    """A driver cannot hold this adapter next to the ones it has loaded (e.g. different PEFT types)."""

    code = "adapter_conflict"

    def __init__(self, message: str, conflicting: list[str]) -> None:
        super().__init__(message)
        self.conflicting = conflicting


class StorageError(LlmosError, OSError):
    """Writing to disk failed (full, read-only, I/O error); the change was rolled back."""

    code = "storage_failed"


class ProcessNotFoundError(InvalidRequestError, LookupError):
    """A kill or lookup of a request or agent that is not (or no longer) running."""

    code = "process_not_found"


class DaemonNotRunningError(LlmosError):
    """No resident kernel (`llmos up`) answers for this LLMOS_HOME."""

    code = "daemon_not_running"


class VersionMismatchError(LlmosError):
    """The resident kernel runs another llmos version than this client; `daemon` and `client` name them."""

    code = "version_mismatch"

    def __init__(self, message: str, daemon: str, client: str) -> None:
        super().__init__(message)
        self.daemon, self.client = daemon, client


class QuotaExceededError(QueueFullError):
    """A tenant is over its tokens-per-minute or concurrency limit (429; `retry_after` is computed from its
    token bucket, or from its running requests for concurrency)."""

    code = "quota_exceeded"

    def __init__(self, message: str, tenant: str, retry_after: float) -> None:
        LlmosError.__init__(self, message)
        self.tenant, self.limit, self.retry_after = tenant, 0, retry_after


class TenantDeniedError(LlmosError, PermissionError):
    """A tenant asked for something that is not its own (another tenant's process, session or memfs
    path) or that needs an admin key; every denial is written to the audit log."""

    code = "permission_denied"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param, self.missing = param, frozenset()
