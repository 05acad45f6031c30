"""Quantize a GGUF model with llama.cpp's own quantizer (`llama_model_quantize`, exposed by
llama-cpp-python), for `llmos quantize`.

The input is a full-precision GGUF (`llmos mod merge` writes one); an input that is already quantized is
refused (requantizing compounds the error) unless the caller allows it. llama.cpp writes the output
tensor by tensor, so progress is the output's size against the size the type should reach. The
quantizer runs its own worker threads (no ggml graph): it does not hold the llama.cpp device thread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from llmos.kernel.errors import InvalidRequestError, LlmosError

#: type name -> (llama_ftype, bits per weight it averages, roughly)
TYPES = {"q8_0": (7, 8.5), "q4_k_m": (15, 4.9), "q4_0": (2, 4.5)}
#: general.file_type values of unquantized models (F32, F16, BF16)
FULL_PRECISION = {0, 1, 32}


class QuantizeError(LlmosError):
    code = "quantize_failed"


def file_type(path: Path) -> tuple[str, int | None]:
    """(architecture, general.file_type) of a GGUF model."""
    import gguf

    from .gguf_lora import gguf_field

    reader = gguf.GGUFReader(str(path))
    return gguf_field(reader, "general.architecture") or "?", gguf_field(reader, "general.file_type")


def quantize(src: Path, out: Path, qtype: str, *, threads: int, allow_requantize: bool = False,
             progress: Callable[[float], None] = lambda _f: None) -> Path:
    import llama_cpp as C

    from .llamacpp_lib import backend_init

    if qtype not in TYPES:
        raise InvalidRequestError(f"type must be one of {', '.join(TYPES)}, got {qtype!r}", param="type")
    arch, ftype = file_type(src)
    if ftype not in FULL_PRECISION and not allow_requantize:
        raise InvalidRequestError(f"{src.name} is already quantized (general.file_type {ftype}): quantize a "
                                  "full-precision model (`llmos mod merge` writes F16), or allow requantizing "
                                  "(--allow-requantize)",
                                  param="model")
    code, bits = TYPES[qtype]
    expected = src.stat().st_size * bits / 16  # from F16
    done = threading.Event()

    def watch() -> None:  # the output grows tensor by tensor
        while not done.wait(0.5):
            size = out.stat().st_size if out.exists() else 0
            progress(min(0.99, size / expected))

    params = C.llama_model_quantize_default_params()
    params.nthread, params.ftype, params.allow_requantize = threads, code, allow_requantize
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        backend_init()
        rc = C.llama_model_quantize(str(src).encode(), str(out).encode(), params)  # its own worker threads
    finally:
        done.set()
        watcher.join()
    if rc != 0 or not out.exists():
        raise QuantizeError(f"llama.cpp could not quantize {src.name} ({arch}) to {qtype} (code {rc}): its "
                            "architecture may be one llama.cpp does not quantize")
    progress(1.0)
    return out
