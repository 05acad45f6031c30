"""The kernel's toolbox: tools, tasks and commands registered by plugins (and MCP servers), with
capability checks and the audit log on every tool call. Reached as `kernel.tools`.

Boundaries: given the plugin manager, the config and the kernel as a `KernelPort` (kernel/port.py:
what tools and tasks that take the kernel receive, and its `redact` for the audit log).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .capabilities import Approver, AuditLog, Grants, ToolDeniedError
from ..errors import LlmosError
from .tools import Task, Tool, ToolError, ToolResult, UnknownToolError, Workers

if TYPE_CHECKING:
    from ..config import Config
    from ..port import KernelPort

DEFAULT_TIMEOUT_S = 30.0


class ToolBox:
    def __init__(self, kernel: "KernelPort", plugins: Any, config: "Config") -> None:
        from llmos.plugins.mcp_tools import McpTools

        self.kernel = kernel
        self._tools: dict[str, Tool] = plugins.collect(
            "register_tools", lambda plugin, fn, name=None, capabilities=None:
            Tool.from_function(fn, name=name, capabilities=capabilities, plugin=plugin))
        self.tasks: dict[str, Task] = plugins.collect(
            "register_tasks", lambda plugin, name, fn, description=None:
            Task.from_function(name, fn, description=description, plugin=plugin))
        self.commands = plugins.collect_commands()
        self.grants = Grants(config.sections.get("capabilities"))
        self.audit = AuditLog(config.home / "audit.jsonl", redact=kernel.redact,
                              **config.retention("audit"))
        self.workers = Workers()
        self.mcp = McpTools(config.sections.get("mcp", {}))

    # -- tools -------------------------------------------------------------------------------------

    def all(self) -> dict[str, Tool]:
        """Plugin tools plus the tools of configured MCP servers (started on demand)."""
        return {**self._tools, **self.mcp.tools()}

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name) or self.mcp.tools().get(name)
        if tool is None:
            raise UnknownToolError(f"unknown tool {name!r}: available are {sorted(self.all())}")
        return tool

    def call(self, name: str, args: Any, *, owner: str = "default", approve: Approver | None = None,
             timeout: float = DEFAULT_TIMEOUT_S, kernel: Any = None) -> ToolResult:
        """Validate, check capabilities, run and audit one tool call.

        Unknown tools, bad arguments and denials raise typed errors; a tool that fails, times out,
        returns something that is not JSON or is refused as busy returns `ToolResult(ok=False,
        error=..., code=...)` (a `ToolError`'s message and code)."""
        tool = self.get(name)
        entry: dict[str, Any] = {"who": owner, "tool": name, "args": args, "capabilities": sorted(tool.capabilities)}
        try:
            params = tool.validate(args)
            entry["decision"] = self.grants.decide(name, tool.plugin, tool.capabilities, approve)
        except ToolDeniedError:
            self.audit.record(**entry, decision="denied", outcome="denied", duration_s=0.0)
            raise
        except LlmosError as exc:
            self.audit.record(**entry, decision="invalid", outcome="invalid", error=str(exc), duration_s=0.0)
            raise
        started = time.monotonic()
        target = kernel if kernel is not None else self.kernel  # `kernel`: the caller's view (a tenant's)
        call = (lambda: tool.fn(target, **params)) if tool.takes_kernel else (lambda: tool.fn(**params))
        try:
            result = ToolResult(True, self.workers.run(name, call, timeout))
        except ToolError as exc:
            result = ToolResult(False, error=str(exc), code=exc.code)
        duration = time.monotonic() - started
        self.audit.record(**entry, outcome="ok" if result.ok else "error", error=result.error, code=result.code,
                          duration_s=round(duration, 4))
        return ToolResult(result.ok, result.value, result.error, duration, result.code)

    # -- tasks -------------------------------------------------------------------------------------

    def run_task(self, name: str, params: Any) -> Any:
        task = self.tasks.get(name)
        if task is None:
            raise UnknownToolError(f"unknown task {name!r}: available are {sorted(self.tasks)}")
        return task.fn(self.kernel, **task.validate(params))

    def close(self) -> None:
        self.mcp.close()
