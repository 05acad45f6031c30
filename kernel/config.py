"""Configuration: defaults < `$LLMOS_HOME/llmos.toml` < LLMOS_* environment < explicit overrides.

`llmos.toml` layout (every key optional):

    [kernel]
    default_model = "smollm2"
    n_threads = 2            # 0 = all available cores
    max_running = 16         # sequences decoded together per loaded model
    max_queue = 256          # waiting requests per loaded model before QueueFullError
    max_batched_tokens = 512 # tokens computed per engine step (prefill chunking)
    n_ctx = 8192             # KV cache size in tokens per loaded model
    memory_budget_mb = 4096  # loaded models beyond this are unloaded, least recently used first
    keep_alive = "10m"       # an idle model is unloaded this long after its last request: seconds or
                             # "250ms", "30s", "5m", "1h30m" (0 = right after use, negative = never)
    max_loaded_models = 0    # models loaded at once (0 = no limit but the memory budget); idle ones
                             # beyond it are unloaded, least recently used first
    prefix_cache = true
    kv_swap_mb = 1024        # RAM per loaded model for the KV of evicted (preempted, cached) sequences
                             # of 256+ tokens, restored instead of recomputed; 0 = off (llama.cpp)
    kv_swap_disk_mb = 4096   # past that, spilled to $LLMOS_HOME/swap/ up to this many MB; 0 = no spill
    kv_session_disk_mb = 2048  # chat sessions' KV saved at the end of each turn under $LLMOS_HOME/kv/, so
                             # the next turn (also after a restart) computes only the new message; least
                             # recently used files go past this many MB; 0 = off (llama.cpp)
    kv_session_file_mb = 256 # a session whose KV is larger is not saved (it recomputes)
    fair_share = true        # tenants share by tokens (VTC), within and across models; false = FIFO
    max_loaded_modules = 8   # adapters loaded at once; idle ones beyond this are unloaded (LRU)
    system_prompt = "..."    # prepended to chat requests that bring no system message ("" = none)
    mem_import_max_bytes = 10485760  # `mem import` skips (and reports) larger files
    embedder_backend = "auto"  # memfs/embeddings: "onnx" (ONNX Runtime, exported once under
                             # $LLMOS_HOME/cache/embedder/), "torch" (sentence-transformers), "bf16" (torch
                             # in bfloat16, CPUs with bf16 instructions only), or "auto" (onnx when
                             # onnxruntime imports, else torch; on bf16 CPUs also bf16 for bulk
                             # ingest); the same passages come back either way

    [models.mymodel]         # extra names for the model registry
    path = "/models/foo.gguf"
    temperature = 0.7        # the model's default sampling: temperature, top_p, top_k, min_p,
                             # repetition_penalty (a table for a built-in name needs no path)
    keep_alive = "1h"        # this model's keep_alive (a request's own `keep_alive` wins)
    device = "auto"          # where it runs: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1", "mps"
    n_gpu_layers = -1        # llama.cpp: layers offloaded to the GPU (-1 all, 0 none); a GPU build only
    main_gpu = 0             # the GPU that holds the model (llama.cpp main_gpu; torch's "cuda:N")

    [audit]                  # retention of $LLMOS_HOME/audit.jsonl (0 = no limit)
    max_age_days = 90
    max_bytes = 50_000_000
    [sessions]               # retention of $LLMOS_HOME/sessions.db (0 = no limit)
    max_age_days = 90        # sessions not updated for this long are deleted (running ones never)
    max_count = 1000         # per owner (tenant): beyond this, its least recently updated are deleted
    [alerts]                 # threshold rules the kernel evaluates (kernel/alerts/rules.py has the keys)
    interval = "5s"
    [alerts.rules.queue_backlog]
    metric = "queue_depth"
    above = 8
    for = "30s"

Other tables belong to other subsystems and are kept verbatim in `Config.sections`: [capabilities]
and [mcp] (kernel/tools/capabilities.py, plugins/mcp_tools.py), and tables plugins declare with the
`register_config` hook (e.g. [redaction]). Every key is checked: an unknown key anywhere, or a table
nobody owns, is a ConfigError naming the file and the key (with the closest known key, when one is
close). Kernel-owned tables are checked by `Config.load`, plugin tables at boot (`check_tables`).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .alerts.rules import parse_alerts
from .errors import ConfigError, InvalidRequestError
from .lib.durations import parse_duration
from .sched.request import MODEL_SAMPLING_KEYS

#: the embedder backends (drivers/embedder_select.py builds them; named here so the config imports no driver)
EMBEDDER_BACKENDS = ("auto", "onnx", "torch", "bf16")


def check_embedder_backend(value: object) -> str:
    """`value` when it names an embedder backend; else ConfigError listing them."""
    if value not in EMBEDDER_BACKENDS:
        raise ConfigError(f"embedder_backend must be one of {', '.join(map(repr, EMBEDDER_BACKENDS))}, "
                          f"got {value!r}")
    return value


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def default_home() -> Path:
    env = os.environ.get("LLMOS_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("llmos", appauthor=False))


@dataclass(frozen=True)
class Config:
    home: Path = field(default_factory=default_home)
    default_model: str = "smollm2"
    n_threads: int = 0
    max_running: int = 16
    max_queue: int = 256
    max_batched_tokens: int = 512
    n_ctx: int = 8192
    memory_budget_mb: int = 4096
    keep_alive: Any = "10m"
    max_loaded_models: int = 0
    prefix_cache: bool = True
    kv_swap_mb: int = 1024
    kv_swap_disk_mb: int = 4096
    kv_session_disk_mb: int = 2048
    kv_session_file_mb: int = 256
    fair_share: bool = True
    max_loaded_modules: int = 8
    system_prompt: str = "You are a helpful assistant. Answer briefly and accurately."
    mem_import_max_bytes: int = 10 * 1024 * 1024
    embedder_backend: str = "auto"
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sections: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, lo in (("max_running", 1), ("max_queue", 1), ("max_batched_tokens", 16),
                         ("n_ctx", 256), ("memory_budget_mb", 1), ("n_threads", 0),
                         ("max_loaded_modules", 1), ("mem_import_max_bytes", 1), ("max_loaded_models", 0),
                         ("kv_swap_mb", 0), ("kv_swap_disk_mb", 0), ("kv_session_disk_mb", 0),
                         ("kv_session_file_mb", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.max_batched_tokens < self.max_running:
            raise ConfigError(
                f"max_batched_tokens ({self.max_batched_tokens}) must be >= max_running ({self.max_running})"
            )
        if not isinstance(self.default_model, str) or not self.default_model:
            raise ConfigError("default_model must be a non-empty string")
        check_embedder_backend(self.embedder_backend)
        self.keep_alive_for(None)
        for name in self.models:
            self.keep_alive_for(name)

    def keep_alive_for(self, model: str | None) -> float:
        """Seconds `model` stays loaded after its last request: its [models.NAME] keep_alive, else the
        kernel's (math.inf: forever)."""
        table = self.models.get(model) if model is not None else None
        if isinstance(table, Mapping) and "keep_alive" in table:
            where, value = f"[models.{model}] keep_alive", table["keep_alive"]
        else:
            where, value = "keep_alive", self.keep_alive
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @property
    def threads(self) -> int:
        return self.n_threads or available_cores()

    @property
    def config_file(self) -> Path:
        return self.home / "llmos.toml"

    @property
    def embedder_cache(self) -> Path:
        """Where the ONNX embedder keeps its export (drivers/embedder_onnx.py)."""
        return self.home / "cache" / "embedder"

    @property
    def kv_dir(self) -> Path:
        """Where chat sessions' KV is saved across restarts (kv_session_disk_mb)."""
        return self.home / "kv"

    @classmethod
    def load(cls, home: str | Path | None = None, **overrides: Any) -> "Config":
        """Build the effective config; raises ConfigError naming the file/variable at fault."""
        home_path = Path(home).expanduser() if home is not None else default_home()
        values: dict[str, Any] = {}
        file = home_path / "llmos.toml"
        sections: dict[str, Any] = {}
        if file.exists():
            try:
                data = tomllib.loads(file.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{file} is not valid TOML: {exc}; fix or delete it") from exc
            _check_keys(file, {k: v for k, v in data.items() if k in TABLES}, TABLES, "")
            kernel = data.pop("kernel", {})
            models = data.pop("models", {})
            _check_retention(file, data)
            parse_alerts(data.get("alerts"), str(file))  # a rule the kernel cannot evaluate stops the boot
            values.update(kernel)
            values["models"] = models
            sections = data
        values.update(_from_env())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(home=home_path, sections=sections, **values)

    def with_overrides(self, **overrides: Any) -> "Config":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def check_tables(self, plugin_tables: Mapping[str, Any]) -> None:
        """At boot, once plugins are loaded: every table of `sections` is owned by the kernel or by a
        plugin (`{table: keys}` from the register_config hook), and has only its owner's keys."""
        schema = {**{t: {k: None for k in keys} for t, keys in plugin_tables.items()}, **TABLES}
        _check_keys(self.config_file, dict(self.sections), schema, "")
        _check_retention(self.config_file, self.sections)

    def retention(self, table: str) -> dict[str, float]:
        """The retention settings of `audit` or `sessions`: the defaults, then the file's values."""
        return {**RETENTION[table], **dict(self.sections.get(table, {}))}


@dataclass(frozen=True)
class PluginTable:
    """A table a plugin reads (the `register_config` hook): `Config.check_tables` accepts its keys."""

    plugin: str
    name: str  # the llmos.toml table (kernel.config.sections[name])
    keys: tuple[str, ...] = ()


_SCALARS = {f.name: f for f in fields(Config) if f.name not in ("home", "models", "sections")}

#: retention of what llmos stores, per table (0 = no limit); applied when the store is opened and
#: as it is written (kernel/tools/capabilities.py AuditLog, kernel/proc/sessions.py SessionStore)
RETENTION: dict[str, dict[str, float]] = {
    "audit": {"max_age_days": 90, "max_bytes": 50_000_000},
    "sessions": {"max_age_days": 90, "max_count": 1000},
}
#: keys of a [models.NAME] table: a local model (`path`) or remote nodes (kernel/models/registry.py remote_spec),
#: where a local model runs (kernel/models/placement.py), and the model's default sampling (kernel/models/defaults.py)
MODEL_KEYS = ("path", "nodes", "remote_model", "max_concurrency", "context_length", "timeout", "keep_alive",
              "device", "n_gpu_layers", "main_gpu", *MODEL_SAMPLING_KEYS)
#: keys of an [alerts.rules.NAME] table (kernel/alerts/rules.py parses them)
ALERT_RULE_KEYS = ("metric", "above", "below", "for", "model", "severity", "summary")
#: the tables the kernel owns and their keys: a dict is a table (its keys), "*" any name, [x] a list of
#: tables, None a value its owner checks
TABLES: dict[str, Any] = {
    "kernel": {name: None for name in _SCALARS},
    "models": {"*": {**{k: None for k in MODEL_KEYS}, "nodes": [{"url": None, "api_key": None}]}},
    "capabilities": {"grant": None, "tools": {"*": None}, "plugins": {"*": None}},
    "mcp": {"servers": {"*": {"command": None, "args": None, "env": None}}},
    **{table: {k: None for k in keys} for table, keys in RETENTION.items()},
    "alerts": {"interval": None, "window": None, "rules": {"*": {k: None for k in ALERT_RULE_KEYS}}},
}


def parse_keep_alive(value: Any) -> float:
    """A request's `keep_alive` in seconds (see parse_duration); InvalidRequestError naming it when bad."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidRequestError(f"keep_alive: {exc}", param="keep_alive") from None


def _check_keys(file: Path, value: Any, schema: Any, where: str) -> None:
    """Raise ConfigError for the first key of `value` that `schema` (see TABLES) does not know."""
    if schema is None:
        return
    if isinstance(schema, list):
        for item in value if isinstance(value, list) else []:
            _check_keys(file, item, schema[0], where)
        return
    label = f"[{where}]" if where else "the top level"
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {label} must be a table, got {type(value).__name__}")
    for key, item in value.items():
        sub = schema.get("*", schema.get(key, KeyError))
        if sub is KeyError:
            known = sorted(k for k in schema if k != "*")
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if not where and key in TABLES["kernel"]:
                hint = f" (did you mean {key!r} under [kernel]?)"
            what = f"[{where}] keys {[key]}" if where else f"table [{key}]" if isinstance(item, dict) else \
                f"top-level keys {[key]}"
            raise ConfigError(f"{file}: unknown {what}{hint}; known: {', '.join(known)}")
        _check_keys(file, item, sub, f"{where}.{key}" if where else key)


def _check_retention(file: Path, data: Mapping[str, Any]) -> None:
    for table in RETENTION:
        for key, value in dict(data.get(table, {})).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{file}: [{table}] {key} must be a number >= 0 (0 = no limit), got {value!r}")


def _from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, f in _SCALARS.items():
        raw = os.environ.get(f"LLMOS_{name.upper()}")
        if raw is None or raw == "":
            continue
        if f.type in ("int", int):
            try:
                out[name] = int(raw)
            except ValueError:
                raise ConfigError(f"LLMOS_{name.upper()} must be an integer, got {raw!r}") from None
        elif f.type in ("bool", bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ConfigError(f"LLMOS_{name.upper()} must be true or false, got {raw!r}")
            out[name] = raw.lower() in ("1", "true", "yes", "on")
        else:
            out[name] = raw
    return out
