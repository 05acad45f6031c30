"""The llmos plugin API: every hook a plugin may implement, and nothing else.

Plugins mark implementations with `llmos.hookimpl` (pluggy project name "llmos"). Registration hooks
receive a `register` callback so the kernel owns naming, duplicates and conflicts. The built-in
drivers ship as a plugin through these same hooks (plugins/builtin.py).
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("llmos")
hookimpl = pluggy.HookimplMarker("llmos")


@hookspec
def register_drivers(register: Callable[[type], None]) -> None:
    """Register device driver classes (subclasses of llmos.drivers.base.Driver)."""


@hookspec
def kernel_booted(kernel: Any) -> None:
    """Called once the kernel is ready to accept requests."""


@hookspec
def kernel_shutdown(kernel: Any) -> None:
    """Called when the kernel begins shutting down, before engines stop."""
