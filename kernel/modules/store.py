"""Installed modules: fine-tuned adapters on disk under `$LLMOS_HOME/modules/NAME/`.

A module is a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) or a GGUF LoRA
file (or both: `llmos mod export NAME --gguf` adds the GGUF form to a PEFT module), plus
`manifest.json` (name, base model and its identity, method, rank, format, size, created,
source). Installing verifies the files without loading any engine: only safetensors or GGUF are
accepted (never pickle), a truncated or corrupt file is refused naming the file, and the base model
must resolve in the registry. Installation is atomic (staged, then renamed).

Runtime state (which modules are loaded where, refcounts) lives in modules/table.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..lib.atomic import atomic_write_text, fsync_dir, fsync_file
from ..errors import InvalidRequestError, LlmosError, UnknownAdapterError
from ..models.registry import GGUF_MAGIC, ModelRegistry, ModelSpec

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only: always .fullmatch


class ModuleNameError(InvalidRequestError):
    """A module name that is not 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit."""

    code = "invalid_module_name"


def check_name(name: object, param: str = "name") -> str:
    """`name` if it is a valid module name (it becomes a directory under $LLMOS_HOME), else ModuleNameError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ModuleNameError(f"module name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit (a name, not a path)", param=param)
    return name


class ModuleError(LlmosError):
    """A module file or directory that cannot be installed or used; the message names the file."""

    code = "invalid_module"


class BaseModelMismatchError(InvalidRequestError):
    """An adapter used with (or installed for) a model other than the one it was trained on."""

    code = "adapter_base_mismatch"


@dataclass(frozen=True)
class Manifest:
    name: str
    base_model: str
    base_identity: str
    formats: list[str]  # "peft" and/or "gguf"; the first is the one it was installed as
    method: str  # "lora", ...
    rank: int | None
    alpha: float | None
    size_bytes: int
    created: float
    source: str
    target_modules: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_identity(spec: ModelSpec) -> str:
    """A stable fingerprint of a model's weights: size plus head and tail bytes of the file (GGUF),
    or the config and weight file sizes (HF directory). Cheap enough to compute on every check."""
    path = spec.path
    digest = hashlib.sha256()
    if path.is_dir():
        digest.update((path / "config.json").read_bytes())
        for f in sorted(path.glob("*.safetensors")):
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    else:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:32]


def check_safetensors(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check the file holds every tensor it declares."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ModuleError(f"{path} is truncated: no safetensors header")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, 100 << 20):
                raise ModuleError(f"{path} is truncated or not a safetensors file (header length {header_len})")
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModuleError(f"{path} is not a readable safetensors file: {exc}") from exc
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise ModuleError(f"{path} is truncated: its header declares {8 + header_len + end} bytes, the file has {size}")
    return header


def _inspect_peft(src: Path) -> dict[str, Any]:
    cfg_file = src / "adapter_config.json"
    if not cfg_file.exists():
        raise ModuleError(f"{src} has no adapter_config.json: give a PEFT adapter directory or a GGUF LoRA file")
    if list(src.glob("*.bin")) or list(src.glob("*.pt")) or list(src.glob("*.pkl")):
        raise ModuleError(f"{src} holds pickle weights (.bin/.pt): only safetensors adapters are loaded")
    weights = src / "adapter_model.safetensors"
    if not weights.exists():
        raise ModuleError(f"{src} has no adapter_model.safetensors")
    check_safetensors(weights)
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise ModuleError(f"{cfg_file} is not valid JSON: {exc}") from exc
    targets = cfg.get("target_modules") or []
    return {
        "format": "peft", "method": str(cfg.get("peft_type", "lora")).lower(), "rank": cfg.get("r"),
        "alpha": cfg.get("lora_alpha"), "declared_base": cfg.get("base_model_name_or_path"),
        "target_modules": sorted(targets) if isinstance(targets, list) else [str(targets)],
        "files": [cfg_file, weights],
    }


def _inspect_gguf(src: Path) -> dict[str, Any]:
    with open(src, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModuleError(f"{src} is not a GGUF file")
    if src.stat().st_size < 64:
        raise ModuleError(f"{src} is truncated")
    meta = {}
    side = src.with_suffix(".json")
    if side.exists():
        meta = json.loads(side.read_text())
    return {"format": "gguf", "method": "lora", "rank": meta.get("rank"), "alpha": meta.get("alpha"),
            "declared_base": meta.get("base_model"), "target_modules": meta.get("target_modules", []),
            "files": [src]}


class ModuleStore:
    def __init__(self, home: Path, registry: ModelRegistry) -> None:
        self.root = home / "modules"
        self.registry = registry

    def _dir(self, name: str) -> Path:
        return self.root / name

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").exists())

    def list(self) -> list[Manifest]:
        return [self.get(n) for n in self.names()]

    def get(self, name: str) -> Manifest:
        file = self._dir(name) / "manifest.json" if isinstance(name, str) and NAME_RE.fullmatch(name) else None
        if file is None or not file.exists():
            raise UnknownAdapterError(name, self.names())
        try:
            return Manifest(**json.loads(file.read_text()))
        except (ValueError, TypeError) as exc:
            raise ModuleError(f"{file} is corrupt ({exc}): reinstall module {name}") from exc

    def _form_path(self, name: str, fmt: str) -> Path:
        return self._dir(name) / ("peft" if fmt == "peft" else "adapter.gguf")

    def weights_path(self, manifest: Manifest, fmt: str) -> Path:
        if fmt not in manifest.formats:
            raise ModuleError(f"module {manifest.name} has no {fmt} form (it has {manifest.formats})")
        return self._form_path(manifest.name, fmt)

    def add_form(self, name: str, fmt: str, file: Path) -> Manifest:
        """Attach another form of the same adapter (e.g. its GGUF export) to an installed module."""
        manifest = self.get(name)
        target = self._form_path(name, fmt)
        tmp = target.with_name(target.name + ".part")
        shutil.copy2(file, tmp)
        fsync_file(tmp)
        os.replace(tmp, target)
        updated = Manifest(**{**manifest.as_dict(), "formats": sorted(set(manifest.formats) | {fmt},
                                                                       key=[*manifest.formats, fmt].index)})
        self.write_manifest(self._dir(name), updated)
        return updated

    def export(self, name: str, fmt: str = "gguf") -> Manifest:
        """Add a GGUF LoRA form to a PEFT module so the llama.cpp driver can mount it too."""
        if fmt != "gguf":
            raise InvalidRequestError(f"modules export to gguf only, not {fmt!r}", param="format")
        from llmos.drivers.gguf_lora import export_peft_to_gguf

        manifest = self.get(name)
        spec = self.registry.resolve(manifest.base_model)
        if spec.format != "gguf":
            raise InvalidRequestError(f"{spec.name} is not a GGUF model: llama.cpp cannot run it", param="name")
        with tempfile.TemporaryDirectory() as tmp:
            out = export_peft_to_gguf(self.weights_path(manifest, "peft"), spec.path, Path(tmp) / "adapter.gguf")
            return self.add_form(name, "gguf", out)

    @staticmethod
    def write_manifest(directory: Path, manifest: Manifest) -> None:
        atomic_write_text(directory / "manifest.json", json.dumps(manifest.as_dict(), indent=2))

    def install(self, src: str | Path, *, name: str | None = None, base: str | None = None,
                replace: bool = False) -> Manifest:
        src = Path(src).expanduser().resolve()
        if not src.exists():
            raise ModuleError(f"{src} does not exist")
        info = _inspect_peft(src) if src.is_dir() else _inspect_gguf(src)
        name = check_name(name or (src.name if src.is_dir() else src.stem))
        if self._dir(name).exists() and not replace:
            raise ModuleError(f"a module named {name!r} is installed already: pick another --name or remove it")
        base_name = base or info["declared_base"]
        if not base_name:
            raise ModuleError(f"{src} does not name its base model: pass --base MODEL")
        try:
            spec = self.registry.resolve(base_name)
        except LlmosError as exc:
            raise ModuleError(f"the adapter's base model {base_name!r} is not available here ({exc}); "
                              f"pass --base with one of {self.registry.names()}") from exc
        manifest = Manifest(
            name=name, base_model=spec.name, base_identity=model_identity(spec), formats=[info["format"]],
            method=info["method"], rank=info["rank"], alpha=info["alpha"],
            size_bytes=sum(f.stat().st_size for f in info["files"]), created=time.time(), source=str(src),
            target_modules=info["target_modules"],
        )
        self.root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            if info["format"] == "gguf":
                copied = [shutil.copy2(info["files"][0], stage / "adapter.gguf")]
            else:
                (stage / "peft").mkdir()
                copied = [shutil.copy2(f, stage / "peft" / f.name) for f in info["files"]]
            for f in copied:  # on disk before the rename publishes them
                fsync_file(f)
            self.write_manifest(stage, manifest)
            if replace and self._dir(name).exists():
                shutil.rmtree(self._dir(name))
            os.replace(stage, self._dir(name))
            fsync_dir(self.root)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        return manifest

    def remove(self, name: str) -> None:
        self.get(name)
        shutil.rmtree(self._dir(name))

    def check_base(self, manifest: Manifest, spec: ModelSpec) -> None:
        """Raise BaseModelMismatchError unless `spec` is the model the adapter was made for."""
        if spec.name != manifest.base_model:
            raise BaseModelMismatchError(
                f"adapter {manifest.name!r} was trained on {manifest.base_model}, not {spec.name}: "
                f"use --model {manifest.base_model} or another adapter", param="adapter")
        if model_identity(spec) != manifest.base_identity:
            raise BaseModelMismatchError(
                f"the weights of {spec.name} changed since adapter {manifest.name!r} was installed: "
                f"reinstall the adapter against the current model", param="adapter")
