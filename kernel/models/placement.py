"""Where a local model runs: the `device`, `n_gpu_layers` and `main_gpu` keys of its [models.NAME] table.

Boundaries: validates the settings into a `Placement` the drivers read from `ModelSpec.options`
["placement"]; knows no framework (the torch driver maps it onto a torch device, the llama.cpp driver
onto its model parameters, each refusing at load what its build cannot do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError

_DEVICE = re.compile(r"auto|cpu|mps|gpu|cuda(:(0|[1-9]\d?))?")
MAX_LAYERS = 100_000  # more than any model has; llama.cpp reads an int32, which a larger number would wrap


@dataclass(frozen=True)
class Placement:
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps" | "gpu" (llama.cpp's offload, any backend)
    n_gpu_layers: int | None = None  # None: all when the build can offload and the device allows it
    main_gpu: int = 0

    @property
    def cpu_only(self) -> bool:
        return self.device == "cpu"

    def torch_device(self, available: str) -> str:
        """The torch device string: `available` is what a probe found ("cuda", "mps", "cpu")."""
        if self.device == "auto":
            return f"cuda:{self.main_gpu}" if available == "cuda" and self.main_gpu else available
        if self.device == "gpu":
            return f"cuda:{self.main_gpu}" if available == "cuda" else available
        if self.device == "cuda":
            return f"cuda:{self.main_gpu}"
        return self.device


def placement(name: str, table: Mapping[str, Any] | None) -> Placement:
    """The placement a [models.NAME] table asks for (defaults where it says nothing)."""
    table = table or {}
    where = f"[models.{name}] in llmos.toml"
    device = table.get("device", "auto")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"{where}: device must be \"auto\", \"cpu\", \"cuda\", \"cuda:N\", \"mps\" or \"gpu\", "
                          f"got {device!r}")
    layers = table.get("n_gpu_layers")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)
                               or not -1 <= layers <= MAX_LAYERS):
        raise ConfigError(f"{where}: n_gpu_layers must be an integer: -1 (all layers), 0 (none) or a count up to "
                          f"{MAX_LAYERS}, got {layers!r}")
    main_gpu = table.get("main_gpu", 0)
    if isinstance(main_gpu, bool) or not isinstance(main_gpu, int) or not 0 <= main_gpu < 64:
        raise ConfigError(f"{where}: main_gpu must be a GPU index from 0, got {main_gpu!r}")
    if device.startswith("cuda:") and "main_gpu" in table and main_gpu != int(device[5:]):
        raise ConfigError(f"{where}: device = {device!r} and main_gpu = {main_gpu} name two GPUs; keep one of them")
    if device == "cpu" and layers not in (None, 0):
        raise ConfigError(f"{where}: device = \"cpu\" offloads nothing; remove n_gpu_layers = {layers} or set a GPU "
                          f"device")
    return Placement(device, 0 if device == "cpu" else layers, main_gpu)
