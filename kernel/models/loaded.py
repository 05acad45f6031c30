"""Loaded models: one engine (driver instance + scheduler + loop thread) per (model, driver).

Models load lazily on first use, with progress reported through a callback, and are unloaded least
recently used first when the loaded set exceeds `memory_budget_mb` or `max_loaded_models`, and by the
reaper thread once idle for their keep_alive (`Config.keep_alive_for`, or the last request's own
`keep_alive`: 0 unloads right after use, math.inf never). A model is never unloaded while it has
requests or is pinned (between `get(pin=True)` and `unpin`: a request being prepared). Driver choice:
the caller's `driver=` if given, else the first available registered driver that loads the model's
format.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..config import Config
from ..sched.engine import Engine
from ..sched.fairshare import ServiceLedger
from ..sched.gate import Gates
from ..errors import DriverUnavailableError, InvalidRequestError, LlmosError, ModelLoadError
from .registry import ModelRegistry, ModelSpec
from ..sched.request import Request
from ..sched.scheduler import Scheduler, SchedulerConfig

log = logging.getLogger("llmos.models")

#: progress(model_name, fraction in [0, 1]); 1.0 means loaded
LoadProgress = Callable[[str, float], None]


@dataclass
class LoadedModel:
    spec: ModelSpec
    driver_name: str
    engine: Engine
    load_seconds: float
    keep_alive: float = math.inf  # seconds it stays loaded once idle (the last request's, else configured)
    pins: int = 0  # requests being prepared on it (ModelManager.get(pin=True) .. unpin)

    def idle_for(self, now: float) -> float | None:
        """Seconds idle (None while it has requests or pins)."""
        return None if self.pins or self.engine.active else now - self.engine.last_used

    @property
    def info(self):
        return self.engine.driver.info

    @property
    def driver(self):
        return self.engine.driver


class ModelManager:
    def __init__(self, config: Config, registry: ModelRegistry, drivers: dict[str, type],
                 progress: LoadProgress | None = None,
                 on_finish: Callable[[Request], None] | None = None) -> None:
        self.config = config
        self.registry = registry
        self.drivers = drivers
        self._progress = progress
        self._on_finish = on_finish
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.RLock()
        #: called with each LoadedModel that is unloaded (the module table forgets its adapters)
        self.on_unload: Callable[[LoadedModel], None] = lambda _loaded: None
        self._wake = threading.Event()  # never the lock: an engine thread pokes while the reaper may hold it
        self._closed = False
        # one fair-share ledger for every engine, one turn-taking gate per shared compute resource
        self.ledger = ServiceLedger(fifo=not config.fair_share)
        self.gates = Gates(fifo=not config.fair_share)
        self._reaper = threading.Thread(target=self._reap_loop, name="llmos-model-reaper", daemon=True)
        self._reaper.start()

    def drivers_for(self, spec: ModelSpec) -> list[str]:
        return [name for name, cls in self.drivers.items() if spec.format in cls.formats]

    def choose_driver(self, spec: ModelSpec, driver: str | None) -> type:
        if driver is not None:
            cls = self.drivers.get(driver)
            if cls is None:
                raise InvalidRequestError(
                    f"unknown driver {driver!r}: installed drivers are {sorted(self.drivers)}", param="driver")
            if spec.format not in cls.formats:
                raise InvalidRequestError(
                    f"driver {driver} cannot load {spec.format} models like {spec.name}", param="driver")
            probe = cls.probe()
            if not probe.available:
                raise DriverUnavailableError(f"driver {driver} cannot run here: {probe.reason}")
            return cls
        reasons = []
        for name in self.drivers_for(spec):
            probe = self.drivers[name].probe()
            if probe.available:
                return self.drivers[name]
            reasons.append(f"{name}: {probe.reason}")
        hint = "; ".join(reasons) or "install the extra that provides one (e.g. pip install 'llmos[torch]')"
        raise DriverUnavailableError(f"no available driver loads {spec.format} models such as {spec.name}: {hint}")

    def json_schema_driver(self, spec: ModelSpec, driver: str | None, schema: dict) -> str:
        """The driver that will constrain `spec`'s output to `schema`: the caller's; else the least loaded
        engine already serving `spec` that can (no second copy of the model loaded); else the first
        available driver that can. Refused now, as a 400, when it cannot (never a failure inside a batch)."""
        able = [n for n in self.drivers_for(spec) if self.drivers[n].supports_json_schema]
        if driver is None:
            with self._lock:
                serving = [m for (name, d), m in self._loaded.items() if name == spec.name and d in able]
            if serving:
                driver = min(serving, key=lambda m: m.engine.active).driver_name
            else:
                driver = next((n for n in able if self.drivers[n].probe().available), able[0] if able else None)
        cls = self.choose_driver(spec, driver)
        if not cls.supports_json_schema:
            hint = f"use --driver {' or '.join(able)}" if able else f"no installed driver can for {spec.name}"
            raise InvalidRequestError(f"the {cls.name} driver cannot constrain output to a JSON schema: {hint}",
                                      param="json_schema")
        cls.check_json_schema(schema)
        return cls.name

    def get(self, model: str, driver: str | None = None, *, pin: bool = False,
            keep_alive: float | None = None) -> LoadedModel:
        """The loaded engine for `model` (loading it). `pin`: not unloaded until `unpin` (the caller
        submits a request to it in between); `keep_alive`: from now on this model's idle time-out."""
        spec = self.registry.resolve(model)
        with self._lock:
            if driver is None:  # already served by several drivers: route to the least loaded one
                serving = [m for (name, _d), m in self._loaded.items() if name == spec.name]
                if serving:
                    driver = min(serving, key=lambda m: m.engine.active).driver_name
            cls = self.choose_driver(spec, driver)
            key = (spec.name, cls.name)
            loaded = self._loaded.get(key)
            if loaded is None:
                loaded = self._load(spec, cls)
                loaded.keep_alive = self.config.keep_alive_for(spec.name)
                self._loaded[key] = loaded
                self._enforce_budget(keep=key)
            loaded.engine.last_used = time.monotonic()
            if keep_alive is not None:
                loaded.keep_alive = keep_alive
            loaded.pins += pin
            return loaded

    def unpin(self, loaded: LoadedModel) -> None:
        with self._lock:
            loaded.pins -= 1
            loaded.engine.last_used = time.monotonic()
        self._wake.set()

    def poke(self) -> None:
        """A request finished: let the reaper look again (keep_alive 0 unloads right after use)."""
        self._wake.set()

    def reap(self, now: float | None = None) -> float:
        """Unload every model idle longer than its keep_alive; returns seconds until the next may expire."""
        now = time.monotonic() if now is None else now
        next_due = math.inf
        with self._lock:
            for key, loaded in list(self._loaded.items()):
                idle = loaded.idle_for(now)
                if idle is None:
                    continue
                if idle >= loaded.keep_alive:
                    log.info("keep_alive: unloading %s after %.1f s idle", key, idle)
                    self._unload(key)
                else:
                    next_due = min(next_due, loaded.keep_alive - idle)
        return next_due

    def _reap_loop(self) -> None:
        while not self._closed:
            self._wake.clear()  # before reaping: a poke from now on is seen by the next wait
            due = self.reap()
            # a busy model is looked at again when its requests finish (poke), or within 60 s
            self._wake.wait(min(due, 60.0))

    def _load(self, spec: ModelSpec, cls: type) -> LoadedModel:
        from llmos.drivers.base import DriverOptions

        cfg = self.config
        options = DriverOptions(n_threads=cfg.threads, max_seqs=cfg.max_running, n_ctx=cfg.n_ctx,
                                max_batched_tokens=cfg.max_batched_tokens, prefix_cache=cfg.prefix_cache,
                                kv_swap_bytes=cfg.kv_swap_mb << 20, kv_swap_disk_bytes=cfg.kv_swap_disk_mb << 20,
                                kv_session_disk_bytes=cfg.kv_session_disk_mb << 20,
                                kv_session_file_bytes=cfg.kv_session_file_mb << 20,
                                extra={"cache_dir": cfg.home / "cache", "swap_dir": cfg.home / "swap",
                                       "kv_dir": cfg.kv_dir})
        driver = cls(spec, options)
        report = self._progress or (lambda _name, _f: None)
        report(spec.name, 0.0)
        started = time.monotonic()
        try:
            info = driver.load(progress=lambda f: report(spec.name, min(f, 0.99)))
        except LlmosError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"driver {cls.name} failed to load {spec.name}: {exc}") from exc
        seconds = time.monotonic() - started
        report(spec.name, 1.0)
        log.info("loaded %s on %s in %.2fs", spec.name, cls.name, seconds)
        scheduler = Scheduler(
            SchedulerConfig(max_running=info.max_seqs, max_waiting=cfg.max_queue,
                            max_batched_tokens=cfg.max_batched_tokens, kv_capacity=info.kv_capacity,
                            max_model_len=info.context_length, mixed_adapters=cls.mixed_adapters,
                            preemption=getattr(cls, "preemptible", True)),
            eos_token_ids=info.eos_token_ids,
            detokenizer_factory=lambda req: driver.detokenizer(req.prompt_token_ids),
            ledger=self.ledger,
        )
        engine = Engine(f"{spec.name}@{cls.name}", driver, scheduler, on_finish=self._on_finish,
                        gate=self.gates.get(getattr(cls, "compute_group", None)))
        return LoadedModel(spec, cls.name, engine, seconds)

    def _enforce_budget(self, keep: tuple[str, str]) -> None:
        budget = self.config.memory_budget_mb * 1024 * 1024
        limit = self.config.max_loaded_models or math.inf
        while (over := "memory budget" if sum(m.info.memory_bytes for m in self._loaded.values()) > budget
               else "max_loaded_models" if len(self._loaded) > limit else None):
            now = time.monotonic()
            idle = [(k, m) for k, m in self._loaded.items() if k != keep and m.idle_for(now) is not None]
            if not idle:
                return
            key, victim = min(idle, key=lambda km: km[1].engine.last_used)
            log.info("%s: unloading %s", over, key)
            self._unload(key)

    def _unload(self, key: tuple[str, str]) -> None:
        loaded = self._loaded.pop(key)
        if loaded.engine.stop():
            loaded.driver.unload()
        else:
            log.warning("engine %s is stuck in a driver step: leaving its model loaded", loaded.engine.name)
        self.on_unload(loaded)

    def unload(self, model: str) -> int:
        """Unload every instance of `model`; returns how many were unloaded."""
        spec = self.registry.resolve(model)
        with self._lock:
            keys = [k for k in self._loaded if k[0] == spec.name]
            for key in keys:
                self._unload(key)
            return len(keys)

    def loaded(self) -> list[LoadedModel]:
        # no lock: cancel/ps must not wait while another model loads (a dict copy is atomic here)
        return list(self._loaded.copy().values())

    def ps(self) -> list[dict]:
        """Live requests of every loaded model, most urgent first (rows of `kernel.ps()`)."""
        now = time.monotonic()
        rows = []
        for loaded in self.loaded():
            requests, positions = loaded.engine.queue()
            swapped = loaded.driver.swapped()
            for req in requests:
                m = req.metrics
                position = positions.get(req.request_id)
                rows.append({
                    "id": req.request_id, "owner": req.owner, "user": req.user, "model": req.model,
                    "position": position, "eta_s": None if position is None else loaded.engine.eta_s(position),
                    "driver": loaded.driver_name, "adapter": req.adapter,
                    "state": req.status.name.lower(), "priority": req.priority.name.lower(),
                    "prompt_tokens": m.prompt_tokens, "output_tokens": m.output_tokens,
                    "age_s": now - m.arrival, "queue_wait_s": m.queue_wait, "ttft_s": m.ttft,
                    "tokens_per_s": m.tokens_per_second,
                    "swapped": swapped.get(req.request_id),  # {"where": "ram" | "disk", "bytes"}: its KV, kept
                })
        return rows

    def engines(self) -> list[dict]:
        """Loaded models with their driver, queue and step figures (rows of `kernel.engines()`)."""
        out = []
        now = time.monotonic()
        for loaded in self.loaded():
            eng = loaded.engine
            out.append({
                "model": loaded.spec.name, "driver": loaded.driver_name, "device": loaded.info.device,
                "running": eng.scheduler.num_running, "waiting": eng.scheduler.num_waiting,
                "steps": eng.steps, "failures": eng.failures, "load_s": loaded.load_seconds,
                "memory_bytes": loaded.info.memory_bytes, "idle_s": loaded.idle_for(now) or 0.0,
                "keep_alive_s": None if math.isinf(loaded.keep_alive) else loaded.keep_alive,  # None: forever
                **loaded.driver.stats(),
            })
        return out

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.set()
            for key in list(self._loaded):
                self._unload(key)
        if self._reaper is not threading.current_thread():
            self._reaper.join(5)
