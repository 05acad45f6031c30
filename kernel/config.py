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
    prefix_cache = true
    max_loaded_modules = 8   # adapters loaded at once; idle ones beyond this are unloaded (LRU)
    system_prompt = "..."    # prepended to chat requests that bring no system message ("" = none)
    mem_import_max_bytes = 10485760  # `mem import` skips (and reports) larger files

    [models.mymodel]         # extra names for the model registry
    path = "/models/foo.gguf"

Other sections belong to other subsystems and are kept verbatim in `Config.sections`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError


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
    prefix_cache: bool = True
    max_loaded_modules: int = 8
    system_prompt: str = "You are a helpful assistant. Answer briefly and accurately."
    mem_import_max_bytes: int = 10 * 1024 * 1024
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sections: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, lo in (("max_running", 1), ("max_queue", 1), ("max_batched_tokens", 16),
                         ("n_ctx", 256), ("memory_budget_mb", 1), ("n_threads", 0),
                         ("max_loaded_modules", 1), ("mem_import_max_bytes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.max_batched_tokens < self.max_running:
            raise ConfigError(
                f"max_batched_tokens ({self.max_batched_tokens}) must be >= max_running ({self.max_running})"
            )
        if not isinstance(self.default_model, str) or not self.default_model:
            raise ConfigError("default_model must be a non-empty string")

    @property
    def threads(self) -> int:
        return self.n_threads or available_cores()

    @property
    def config_file(self) -> Path:
        return self.home / "llmos.toml"

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
            kernel = data.pop("kernel", {})
            models = data.pop("models", {})
            if not isinstance(kernel, dict) or not isinstance(models, dict):
                raise ConfigError(f"{file}: [kernel] and [models] must be tables")
            values.update(_known(kernel, str(file)))
            values["models"] = models
            sections = data
        values.update(_from_env())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(home=home_path, sections=sections, **values)

    def with_overrides(self, **overrides: Any) -> "Config":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_SCALARS = {f.name: f for f in fields(Config) if f.name not in ("home", "models", "sections")}


def _known(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - set(_SCALARS))
    if unknown:
        raise ConfigError(f"{where}: unknown [kernel] keys {unknown}; known: {sorted(_SCALARS)}")
    return dict(table)


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
