"""The module table: which adapters are loaded into which running driver, and who uses them.

`insmod` loads an installed module into the driver that serves its base model (loading the base
model if needed), `rmmod` unloads it — refused while requests use it, unless forced, in which case
those requests are cancelled first — and `lsmod` lists what is loaded with driver, memory and use
count. Requests naming an adapter load it on demand and hold a reference until they finish. Beyond
`max_loaded_modules`, idle modules are unloaded least recently used first.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import AdapterConflictError, InvalidRequestError, LlmosError
from ..models.loaded import LoadedModel, ModelManager
from .store import Manifest, ModuleStore

#: which driver runs each adapter format, and back
DRIVER_FOR_FORMAT = {"peft": "torch", "gguf": "llamacpp"}
FORMAT_FOR_DRIVER = {d: f for f, d in DRIVER_FOR_FORMAT.items()}


class ModuleBusyError(LlmosError):
    """rmmod of a module that requests are using; wait, or force (which cancels them)."""

    code = "module_busy"

    def __init__(self, name: str, users: int) -> None:
        super().__init__(f"module {name!r} is used by {users} request(s): wait for them, "
                         f"or force the removal (which cancels them)")
        self.name = name
        self.users = users


@dataclass
class LoadedModule:
    manifest: Manifest
    loaded: LoadedModel
    memory_bytes: int
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    users: set[str] = field(default_factory=set)

    def as_dict(self) -> dict:
        return {"name": self.manifest.name, "base_model": self.manifest.base_model,
                "driver": self.loaded.driver_name, "format": FORMAT_FOR_DRIVER[self.loaded.driver_name],
                "memory_bytes": self.memory_bytes, "use_count": len(self.users)}


class ModuleTable:
    def __init__(self, store: ModuleStore, models: ModelManager, max_loaded: int,
                 cancel: Callable[[str], bool]) -> None:
        self.store = store
        self.models = models
        self.max_loaded = max_loaded
        self._cancel = cancel
        self._loaded: dict[tuple[str, str], LoadedModule] = {}  # (module, driver) -> entry
        # _lock serializes insmod/rmmod (which wait on engine threads); _state guards the table and
        # user sets and is the only lock engine threads and the model manager ever take here.
        self._lock = threading.RLock()
        self._state = threading.Lock()

    def driver_for(self, manifest: Manifest, requested: str | None = None) -> str:
        """The driver that runs this module: the requested one if the module has its form."""
        drivers = [DRIVER_FOR_FORMAT[f] for f in manifest.formats if f in DRIVER_FOR_FORMAT]
        if requested is None:
            if not drivers:
                raise InvalidRequestError(f"module {manifest.name} has no loadable form", param="adapter")
            return drivers[0]
        if requested not in drivers:
            hint = ""
            if requested == "llamacpp":
                hint = (" (export it: llmos mod export NAME --gguf)" if manifest.method == "lora"
                        else f": llama.cpp loads LoRA adapters only, and this is a {manifest.method} adapter")
            raise InvalidRequestError(
                f"adapter {manifest.name!r} has forms {manifest.formats}, which run on {drivers}, "
                f"not on the {requested} driver{hint}", param="driver")
        return requested

    def insmod(self, name: str, *, driver: str | None = None, user: str | None = None) -> LoadedModule:
        """Load a module (no-op if loaded); with `user`, that request holds a reference from now on."""
        with self._lock:
            manifest = self.store.get(name)
            driver = self.driver_for(manifest, driver)
            with self._state:
                entry = self._loaded.get((name, driver))
                if entry is not None:
                    entry.last_used = time.monotonic()
                    if user is not None:
                        entry.users.add(user)
                    return entry
            spec = self.models.registry.resolve(manifest.base_model)
            self.store.check_base(manifest, spec)
            loaded = self.models.get(spec.name, driver)
            self._evict(keep=1)
            path = self.store.weights_path(manifest, FORMAT_FOR_DRIVER[driver])
            try:
                nbytes = loaded.engine.call(lambda: loaded.driver.load_adapter(name, path))
            except AdapterConflictError as exc:
                # the driver cannot hold both kinds: make room if the others are idle, else say so
                with self._state:
                    busy = [n for n in exc.conflicting if (e := self._loaded.get((n, driver))) and e.users]
                if busy:
                    raise
                for other in exc.conflicting:
                    if (other, driver) in self._loaded:
                        self.rmmod(other)
                nbytes = loaded.engine.call(lambda: loaded.driver.load_adapter(name, path))
            entry = LoadedModule(manifest, loaded, int(nbytes or 0))
            with self._state:
                self._loaded[(name, driver)] = entry
                if user is not None:
                    entry.users.add(user)
            return entry

    def rmmod(self, name: str, *, force: bool = False) -> list[str]:
        """Unload a module from every driver; returns the ids of requests a forced removal cancelled."""
        with self._lock:
            with self._state:
                keys = [k for k in self._loaded if k[0] == name]
                users = sorted(set().union(*(self._loaded[k].users for k in keys))) if keys else []
            if not keys:
                self.store.get(name)  # unknown name -> UnknownAdapterError
                raise InvalidRequestError(f"module {name!r} is not loaded", param="name")
            if users and not force:
                raise ModuleBusyError(name, len(users))
            for rid in users:
                self._cancel(rid)
            for key in keys:
                with self._state:
                    entry = self._loaded.pop(key, None)
                if entry is not None:
                    entry.users.clear()
                    entry.loaded.engine.call(lambda e=entry: e.loaded.driver.unload_adapter(name))
            return users

    def lsmod(self) -> list[dict]:
        with self._state:
            return [e.as_dict() for e in self._loaded.values()]

    def installed(self) -> list[dict]:
        """Installed modules, each with where it is loaded (driver, memory, use count)."""
        loaded = self.lsmod()
        return [{**m.as_dict(), "loaded": [row for row in loaded if row["name"] == m.name]}
                for m in self.store.list()]

    def release(self, request_id: str) -> None:
        with self._state:
            for entry in self._loaded.values():
                entry.users.discard(request_id)

    def _evict(self, keep: int) -> None:
        """Unload idle modules, least recently used first, until `keep` more fit in the budget."""
        while len(self._loaded) + keep > self.max_loaded:
            with self._state:
                idle = [e for e in self._loaded.values() if not e.users]
                if not idle:
                    return
                victim = min(idle, key=lambda e: e.last_used)
                del self._loaded[(victim.manifest.name, victim.loaded.driver_name)]
            victim.loaded.engine.call(lambda v=victim: v.loaded.driver.unload_adapter(v.manifest.name))

    def forget_engine(self, loaded: LoadedModel) -> None:
        """Drop entries of an engine that was unloaded (its adapters went with it)."""
        with self._state:
            for key in [k for k, e in self._loaded.items() if e.loaded is loaded]:
                del self._loaded[key]
