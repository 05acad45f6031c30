"""What a finished request returns: `Completion` (a light module: the clients of the resident kernel
build it too, without importing the scheduler)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .request import RequestStatus


@dataclass(frozen=True)
class Completion:
    request_id: str
    model: str
    text: str
    token_ids: tuple[int, ...]
    status: RequestStatus
    error: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    #: log-probabilities of prompt tokens 1..n-1, each given those before it (None unless asked for)
    prompt_logprobs: tuple[float, ...] | None = None

    @property
    def finish_reason(self) -> str | None:
        return self.status.finish_reason

    @property
    def usage(self) -> dict[str, int]:
        prompt = int(self.metrics.get("prompt_tokens") or 0)
        return {"prompt_tokens": prompt, "completion_tokens": len(self.token_ids),
                "total_tokens": prompt + len(self.token_ids)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.request_id, "model": self.model, "text": self.text,
            "finish_reason": self.finish_reason, "status": self.status.name.lower(),
            "error": self.error, "usage": self.usage, "metrics": self.metrics, "sources": list(self.sources),
            **({"prompt_logprobs": list(self.prompt_logprobs)} if self.prompt_logprobs is not None else {}),
        }
