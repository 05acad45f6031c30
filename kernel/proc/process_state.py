"""An agent process's lifecycle states and events (a light module: clients of the resident kernel read
them without importing the agent loop)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ProcessState(enum.IntEnum):
    """Ordered lifecycle: every state from FINISHED on is terminal."""

    STARTING = 0
    THINKING = 1
    WAITING_TOOL = 2
    FINISHED = 3
    FAILED = 4
    KILLED = 5
    OUT_OF_BUDGET = 6

    @property
    def finished(self) -> bool:
        return self >= ProcessState.FINISHED


@dataclass(frozen=True)
class AgentEvent:
    kind: str  # step | token | tool_call | tool_result | answer | error
    step: int
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
