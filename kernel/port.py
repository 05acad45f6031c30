"""The kernel as its parts see it: `KernelPort`, the few public calls that proc/ (agents, structured
output) and tools/ (the toolbox, and every tool or task that takes the kernel) are given.

The facade (`kernel.py`) wires the parts and hands them itself typed as this protocol, so no part
ever imports the facade: the dependency runs facade → parts → sched/errors, with no cycle.
Must not import anything at run time (the types below are for checkers only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .proc.sessions import SessionStore
    from .sched.handle import RequestHandle
    from .tools.tools import ToolResult


class KernelPort(Protocol):
    def submit(self, prompt: str | None = None, **kwargs: Any) -> RequestHandle:
        """Validate and queue a request (`Kernel.submit`)."""
        ...

    def call_tool(self, name: str, args: Any, **kwargs: Any) -> ToolResult:
        """Validate, authorize, run and audit a tool call (`Kernel.call_tool`)."""
        ...

    def redact(self, text: str) -> str:
        """`text` through every registered redactor (`Kernel.redact`)."""
        ...

    @property
    def sessions(self) -> SessionStore:
        """The session store (`Kernel.sessions`)."""
        ...
