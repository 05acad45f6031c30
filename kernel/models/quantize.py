"""`llmos quantize MODEL --type q8_0|q4_k_m|q4_0 [--as NAME]`: a smaller copy of a GGUF model, made by
llama.cpp's quantizer (drivers/gguf_quantize.py) and registered as a local model (local.py). The source
is never changed; the new name must be free (default: MODEL-TYPE)."""

from __future__ import annotations

from typing import Callable

from ..errors import InvalidRequestError
from .registry import ModelRegistry, ModelSpec


def quantize_model(registry: ModelRegistry, model: str, qtype: str, as_name: str | None, *, threads: int,
                   allow_requantize: bool = False, progress: Callable[[float], None] = lambda _f: None) -> ModelSpec:
    from llmos.drivers.gguf_quantize import TYPES, quantize

    if qtype not in TYPES:
        raise InvalidRequestError(f"type must be one of {', '.join(TYPES)}, got {qtype!r}", param="type")
    spec = registry.resolve(model)
    if spec.format != "gguf":
        raise InvalidRequestError(f"{spec.name} is a {spec.format} model: llama.cpp's quantizer reads GGUF "
                                  "models (`llmos mod merge` writes one)", param="model")
    default = f"{spec.path.stem if spec.source == 'path' else spec.name}-{qtype}"  # a path's name is the path
    as_name = registry.local.check_new(as_name or default, registry.names())
    info = {"description": f"{spec.name} quantized to {qtype} by llama.cpp", "made_by": "quantize",
            "source": spec.name, "type": qtype}
    registry.local.create(as_name, "model.gguf", lambda out: quantize(
        spec.path, out, qtype, threads=threads, allow_requantize=allow_requantize, progress=progress), info)
    return registry.resolve(as_name)
