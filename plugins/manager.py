"""Loading plugins and collecting what they register, with failures isolated per plugin.

The built-ins always load. Installed plugins come from the entry-point group "llmos";
`LLMOS_PLUGINS` (comma list of entry-point names) restricts them and `LLMOS_PLUGINS=""` loads none.
A plugin that fails to import, or raises inside a hook, is recorded in `failures` (name + error) and
skipped; everything else keeps working.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from . import builtin, builtin_nlp, builtin_tools, hookspecs
from .redaction import Redaction

log = logging.getLogger("llmos.plugins")

BUILTINS = {"llmos.builtin": builtin, "llmos.tools": builtin_tools, "llmos.nlp": builtin_nlp}


@dataclass(frozen=True)
class PluginFailure:
    name: str
    error: str


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[..., Any]
    help: str
    plugin: str


class PluginManager(pluggy.PluginManager):
    def __init__(self, *, load_entrypoints: bool = True) -> None:
        super().__init__("llmos")
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.sources: dict[str, tuple[str, str]] = {}  # plugin name -> (source, version)
        for name, module in {**BUILTINS, "llmos.redaction": Redaction()}.items():  # one Redaction per kernel
            self.register(module, name=name)
            self.sources[name] = ("builtin", _llmos_version())
        if load_entrypoints:
            self._load_entrypoints()

    def _load_entrypoints(self) -> None:
        allowed_env = os.environ.get("LLMOS_PLUGINS")
        allowed = None if allowed_env is None else {p.strip() for p in allowed_env.split(",") if p.strip()}
        for ep in importlib.metadata.entry_points(group="llmos"):
            if (allowed is not None and ep.name not in allowed) or self.has_plugin(ep.name):
                continue
            version = ep.dist.version if ep.dist is not None else "?"
            self.sources[ep.name] = (f"entry point {ep.value}", version)
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break llmos
                self._fail(ep.name, exc)

    def report_failure(self, hook: str, exc: BaseException) -> None:
        """A hook call failed as a whole (pluggy stops at the first raising plugin): name the plugin
        from the traceback when possible."""
        tb, culprit = exc.__traceback__, None
        modules = {getattr(p, "__name__", None) or type(p).__module__: n for n, p in self.list_name_plugin()}
        while tb is not None:
            culprit = modules.get(tb.tb_frame.f_globals.get("__name__"), culprit)
            tb = tb.tb_next
        self._fail(culprit or hook, RuntimeError(f"in {hook}: {type(exc).__name__}: {exc}"))

    def _fail(self, name: str, exc: BaseException) -> None:
        log.warning("plugin %s failed: %s: %s", name, type(exc).__name__, exc)
        self.failures.append(PluginFailure(name, f"{type(exc).__name__}: {exc}"))

    def call_each(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of a hook, isolating failures (registration and observers)."""
        for impl in reversed(getattr(self.hook, hook).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:  # noqa: BLE001
                self._fail(impl.plugin_name, RuntimeError(f"in {hook}: {type(exc).__name__}: {exc}"))

    def collect(self, hook: str, make: Callable[..., Any]) -> dict[str, Any]:
        """Run a registration hook; `make(plugin, *args, **kwargs)` builds each entry (name first
        registered wins; a duplicate is reported and skipped)."""
        found: dict[str, Any] = {}
        for impl in reversed(getattr(self.hook, hook).get_hookimpls()):
            def register(*args: Any, _plugin=impl.plugin_name, **kwargs: Any) -> None:
                entry = make(_plugin, *args, **kwargs)
                if entry.name in found:
                    raise ValueError(f"{entry.name!r} is registered already by {found[entry.name].plugin}")
                found[entry.name] = entry
            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001
                self._fail(impl.plugin_name, RuntimeError(f"in {hook}: {type(exc).__name__}: {exc}"))
        return found

    def collect_drivers(self) -> dict[str, type]:
        @dataclass(frozen=True)
        class _Entry:
            name: str
            cls: type
            plugin: str

        def make(plugin: str, cls: type) -> _Entry:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"driver class {cls!r} has no name")
            return _Entry(name, cls, plugin)

        return {name: e.cls for name, e in self.collect("register_drivers", make).items()}

    def collect_commands(self) -> dict[str, Command]:
        def make(plugin: str, name: str, handler: Callable, help: str | None = None) -> Command:  # noqa: A002
            if not callable(handler):
                raise TypeError(f"command {name!r}: handler is not callable")
            return Command(name, handler, help or (handler.__doc__ or "").strip().split("\n")[0], plugin)

        return self.collect("register_commands", make)

    def info(self) -> list[dict[str, Any]]:
        """Each plugin: name, version, source, hooks implemented, error (None when it loaded)."""
        rows = []
        failed = {f.name: f.error for f in self.failures}
        for name, plugin in self.list_name_plugin():
            hooks = sorted(h.name for h in self.get_hookcallers(plugin) or [])
            source, version = self.sources.get(name, ("registered in process", "?"))
            rows.append({"name": name, "version": version, "source": source, "hooks": hooks,
                         "error": failed.get(name)})
        for name, error in failed.items():
            if not self.has_plugin(name):
                source, version = self.sources.get(name, ("?", "?"))
                rows.append({"name": name, "version": version, "source": source, "hooks": [], "error": error})
        return rows


def _llmos_version() -> str:
    try:
        return importlib.metadata.version("llmos")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"
