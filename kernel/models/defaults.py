"""A model's default sampling: what a request that leaves temperature, top_p, ... unset gets.

In order, the first that says wins for each field: the model's `[models.NAME]` table in llmos.toml,
the model file (GGUF `general.sampling.*` metadata, or a Hugging Face directory's
`generation_config.json` when it samples), then `BUILTIN_SAMPLING` (Ollama's defaults). A remote
model's unset fields are not filled from these: its nodes apply their own model's defaults.
`kernel.submit` fills a request's unset fields from these once (`SamplingParams.with_defaults`).

The GGUF header is read here in pure Python (no llama_cpp import): only the key/value section,
through an mmap, cached per file version.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import struct
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, InvalidRequestError
from ..sched.request import BUILTIN_SAMPLING, MODEL_SAMPLING_KEYS, SamplingParams

log = logging.getLogger("llmos.models")

#: llama.cpp's GGUF keys (LLAMA_MODEL_META_KEY_SAMPLING_*, gguf-py Keys.General.SAMPLING_*) -> ours
GGUF_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
_HF_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")  # generation_config.json names


def table_sampling(name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling keys of a `[models.NAME]` table, validated (ConfigError names the table)."""
    found = {k: table[k] for k in MODEL_SAMPLING_KEYS if k in table}
    try:
        SamplingParams(**found)
    except InvalidRequestError as exc:
        raise ConfigError(f"[models.{name}] in llmos.toml: {exc}") from None
    return found


def file_sampling(fmt: str, location: Path | str) -> dict[str, Any]:
    """Defaults the model file itself declares ({} when none, or the file is not readable yet)."""
    try:
        path = Path(location)
        if fmt == "gguf":
            stat = path.stat()
            return dict(_gguf_sampling(str(path), stat.st_mtime_ns, stat.st_size))
        if fmt == "hf":
            return _hf_sampling(path / "generation_config.json")
    except OSError:
        pass
    return {}


def effective_sampling(fmt: str, location: Path | str, table: Mapping[str, Any]) -> dict[str, Any]:
    """Every default field of a local model: its table, else its file, else BUILTIN_SAMPLING. A remote
    model ("openai") has only its table's: the rest is left to its nodes, which know their model."""
    if fmt == "openai":
        return dict(table)
    return {**BUILTIN_SAMPLING, **file_sampling(fmt, location), **table}


def _valid(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Keep the values a request could set; a model file's out-of-range value is logged and ignored."""
    out = {}
    for key, value in values.items():
        try:
            SamplingParams(**{key: value})
        except InvalidRequestError as exc:
            log.warning("%s: ignoring its default %s (%s)", where, key, exc)
            continue
        out[key] = value
    return out


def _hf_sampling(config: Path) -> dict[str, Any]:
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("do_sample") is not True:  # transformers decodes greedily then
        return {}
    return _valid({k: data[k] for k in _HF_KEYS if k in data}, str(config))


@functools.lru_cache(maxsize=32)
def _gguf_sampling(path: str, _mtime_ns: int, _size: int) -> tuple[tuple[str, Any], ...]:
    meta = read_gguf_metadata(path, prefix="general.sampling.")
    values = {}
    for key, ours in GGUF_SAMPLING_KEYS.items():
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if ours == "top_k":
                value = max(int(value), 0)  # llama.cpp: <= 0 disables top-k, as our 0 does
            else:
                value = round(float(value), 6)  # stored as f32: 0.8 reads 0.800000011920929
            values[ours] = value
    return tuple(_valid(values, path).items())


# -- a minimal GGUF key/value reader (format: github.com/ggml-org/ggml docs/gguf.md) ----------------

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: str | Path, prefix: str = "") -> dict[str, Any]:
    """The GGUF (v2/v3, little-endian) metadata whose keys start with `prefix`; {} for a file that is
    not such a GGUF or is cut short. Arrays are skipped over, never decoded."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, prefix)
    except (OSError, ValueError, struct.error, UnicodeDecodeError, IndexError):
        return {}


def _parse(buf: Any, prefix: str) -> dict[str, Any]:
    if buf[:4] != b"GGUF":
        return {}
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3) or n_kv > len(buf):
        return {}
    pos, out = 24, {}
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if key.startswith(prefix) and vtype in _SCALARS:
            out[key] = struct.unpack_from("<" + _SCALARS[vtype], buf, pos)[0]
        elif key.startswith(prefix) and vtype == _STRING:
            out[key] = _string(buf, pos)[0]
        pos = _skip(buf, pos, vtype)
    return out


def _string(buf: Any, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + n
    if end > len(buf):
        raise ValueError("string past the end of the file")
    return bytes(buf[pos + 8:end]).decode("utf-8"), end


def _skip(buf: Any, pos: int, vtype: int) -> int:
    if vtype in _SCALARS:
        return pos + struct.calcsize("<" + _SCALARS[vtype])
    if vtype == _STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype != _ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype}")
    item, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item in _SCALARS:
        return pos + count * struct.calcsize("<" + _SCALARS[item])
    if count > len(buf):
        raise ValueError("array longer than the file")
    for _ in range(count):
        pos = _skip(buf, pos, item)
    return pos
