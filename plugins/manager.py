"""Loading plugins: the built-ins always, installed entry points (group "llmos") on request.

`LLMOS_PLUGINS` (comma list of entry-point names) restricts which installed plugins load;
`LLMOS_PLUGINS=""` loads none. A plugin that fails to import is recorded in `failures` and skipped.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass

import pluggy

from . import builtin, hookspecs

log = logging.getLogger("llmos.plugins")


@dataclass(frozen=True)
class PluginFailure:
    name: str
    error: str


class PluginManager(pluggy.PluginManager):
    def __init__(self, *, load_entrypoints: bool = True) -> None:
        super().__init__("llmos")
        self.add_hookspecs(hookspecs)
        self.register(builtin, name="llmos.builtin")
        self.failures: list[PluginFailure] = []
        if load_entrypoints:
            self._load_entrypoints()

    def _load_entrypoints(self) -> None:
        allowed_env = os.environ.get("LLMOS_PLUGINS")
        allowed = None if allowed_env is None else {p.strip() for p in allowed_env.split(",") if p.strip()}
        for ep in importlib.metadata.entry_points(group="llmos"):
            if allowed is not None and ep.name not in allowed:
                continue
            if self.has_plugin(ep.name):
                continue
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break llmos
                log.warning("plugin %s failed to load: %s", ep.name, exc)
                self.failures.append(PluginFailure(ep.name, f"{type(exc).__name__}: {exc}"))

    def collect_drivers(self) -> dict[str, type]:
        drivers: dict[str, type] = {}

        def register(cls: type) -> None:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"driver class {cls!r} has no name")
            if name in drivers and drivers[name] is not cls:
                log.warning("driver %s registered twice; keeping the first (%r)", name, drivers[name])
                return
            drivers[name] = cls

        for impl in self.hook.register_drivers.get_hookimpls():
            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001
                log.warning("plugin %s failed in register_drivers: %s", impl.plugin_name, exc)
                self.failures.append(PluginFailure(impl.plugin_name, f"{type(exc).__name__}: {exc}"))
        return drivers
