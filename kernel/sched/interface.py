"""The scheduler <-> driver contract: plain dataclasses, nothing else crosses this line.

One engine step is `scheduler.schedule() -> SchedulerOutput`, `driver.execute(SchedulerOutput) ->
DriverOutput`, `scheduler.update_from_output(SchedulerOutput, DriverOutput)`.

The driver keeps its own per-sequence state keyed by `request_id`: it learns a sequence from
`NewSequence`, appends the tokens it samples itself, and drops the sequence when its id appears in
`SchedulerOutput.released`. The scheduler's own settings (`SchedulerConfig`) and the events it gives
the engine (`RequestOutput`) are dataclasses here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .request import RequestStatus, SamplingParams


@dataclass(frozen=True)
class NewSequence:
    """A sequence the driver has not seen (or must rebuild after a preemption).

    `token_ids` are all tokens known so far: the prompt, plus the output of a resumed request.
    """

    request_id: str
    token_ids: tuple[int, ...]
    sampling: SamplingParams
    adapter: str | None = None
    prompt_len: int = 0  # token_ids[prompt_len:] were generated before a preemption
    priority: int = 2  # the request's Priority value (lower: more urgent); caches keep urgent work longer
    #: a chat session's opaque key (a hash of its owner and id): a driver may keep this sequence's KV
    #: under it across restarts, and restore it for the session's next turn
    cache_key: str | None = None
    #: whose prompts these are (the tenant's name; None: in-process callers): prefix KV is reused only
    #: between sequences with the same salt, so no tenant learns another's prompts from a reuse count or
    #: a fast first token (vLLM's cache_salt)
    cache_salt: str | None = None


@dataclass(frozen=True)
class SchedulerOutput:
    """What the driver must do in one step.

    `num_scheduled_tokens[rid]` tokens of sequence `rid` are to be computed, continuing from what the
    driver already holds for it. When that reaches the end of the sequence's known tokens, the driver
    samples one new token for it. A partial prefill (chunked) samples nothing.
    """

    step: int
    new: tuple[NewSequence, ...] = ()
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    released: tuple[str, ...] = ()
    #: the released sequences whose request ended normally (stop or length): not preempted, failed or
    #: cancelled (a driver saves a chat session's KV at the end of such a turn)
    finished: frozenset[str] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens and not self.released

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())


@dataclass
class DriverOutput:
    """What the driver did in one step.

    `sampled[rid]` is the token sampled for each sequence that finished its scheduled tokens at the
    end of its known tokens. `cached_tokens[rid]` counts prompt tokens whose KV was reused from the
    driver's prefix cache instead of computed. `failed[rid]` holds a per-sequence error message: that
    request ends FINISHED_FAILED while the others continue. `pending` names sequences a driver that
    computes elsewhere (a remote server) could not advance in this step: nothing of theirs counts as
    computed and the scheduler gives them the same work again next step. `prompt_logprobs[rid]` holds
    (position, log-probability of the prompt token there) for the prompt positions this step computed,
    for sequences whose sampling asks for them (a position computed again after a preemption is
    reported again, with the same value).
    """

    sampled: dict[str, int] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    cached_tokens: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    pending: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SchedulerConfig:
    max_running: int = 16
    max_waiting: int = 256
    max_batched_tokens: int = 512
    kv_capacity: int = 8192
    max_model_len: int = 8192
    #: the driver can run rows with different adapters in one step; if not, steps are grouped
    mixed_adapters: bool = True
    #: running requests may be preempted for more urgent ones (off for remote drivers, whose
    #: generations cannot be resumed: priority then orders admission only)
    preemption: bool = True

    def __post_init__(self) -> None:
        if self.max_batched_tokens < self.max_running:
            raise ValueError("max_batched_tokens must be >= max_running so every decode fits a step")


@dataclass(frozen=True)
class RequestOutput:
    """An event for a request's consumer: new text/tokens and, at the end, a terminal status."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    status: RequestStatus
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished
