"""The llmos plugin API: every hook a plugin may implement, and nothing else.

Mark implementations with `from llmos import hookimpl` (pluggy project name "llmos"). Registration
hooks receive a `register` callback, so the kernel owns naming, duplicates and conflicts. The
built-in drivers, tools and tasks ship as plugins through these same hooks (plugins/builtin*.py).
Observer hooks must not block: they run on the kernel's threads.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("llmos")
hookimpl = pluggy.HookimplMarker("llmos")


@hookspec
def register_tools(register: Callable[..., None]) -> None:
    """Register tools: `register(fn, name=None, capabilities=None)`, fn typed and documented."""


@hookspec
def register_tasks(register: Callable[..., None]) -> None:
    """Register tasks: `register(name, fn, description=None)`, fn(kernel, **params) -> JSON-able."""


@hookspec
def register_drivers(register: Callable[[type], None]) -> None:
    """Register device driver classes (subclasses of llmos.drivers.base.Driver)."""


@hookspec
def register_commands(register: Callable[..., None]) -> None:
    """Register shell/CLI commands: `register(name, handler, help=None)`, handler(kernel, args) -> str."""


@hookspec
def register_redactors(register: Callable[[str, Callable[[str], str]], None]) -> None:
    """Register text maskers: `register(name, fn)`, fn(text) -> text, run over stored sessions and audit logs."""


@hookspec
def register_config(register: Callable[..., None]) -> None:
    """Declare an llmos.toml table this plugin reads and its keys: `register(table, keys)`."""


@hookspec
def prepare_prompt(prompt: Any) -> None:
    """Inspect or rewrite `prompt.text` / `prompt.messages` before tokenization (wrapper=True: around others)."""


@hookspec
def request_submitted(request: dict[str, Any]) -> None:
    """Observe a request accepted by the kernel (id, owner, model, adapter, priority)."""


@hookspec
def request_finished(request: dict[str, Any]) -> None:
    """Observe a finished request (id, owner, model, status, error, and its metrics)."""


@hookspec
def alert_fired(alert: dict[str, Any]) -> None:
    """An [alerts] rule started firing: name, metric, model, condition, value, severity, summary, fired_at."""


@hookspec
def alert_resolved(alert: dict[str, Any]) -> None:
    """A firing alert stopped holding: the alert_fired fields plus resolved_at and state "resolved"."""


@hookspec
def kernel_booted(kernel: Any) -> None:
    """Called once the kernel is ready to accept requests."""


@hookspec
def kernel_shutdown(kernel: Any) -> None:
    """Called when the kernel begins shutting down, before engines stop."""
