"""JSONL data files as fine-tuning and evaluation read them: UTF-8, one JSON object per line, each row
checked by the caller's rule; bad rows are reported with their line number and skipped, and a
missing, unreadable or empty file (no usable row) is an error naming the file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llmos.kernel.errors import InvalidRequestError


class DataFileError(InvalidRequestError):
    """A data file cannot be used; the message names the file (and line)."""

    code = "invalid_data"


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Dataset:
    path: Path
    examples: list[dict[str, Any]]
    errors: list[RowError]
    sha256: str
    lines: tuple[int, ...] = ()  # the line number of each example


def read_rows(path: str | Path, check: Callable[[Any], str | None], *, param: str, what: str,
              error: type[DataFileError] = DataFileError) -> Dataset:
    """The rows of `path` that `check` accepts (it returns None, or what is wrong with the row)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}", param=param) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start})", param=param) from exc
    examples, errors, lines = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a JSON string
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            errors.append(RowError(number, f"invalid JSON ({getattr(exc, 'msg', 'nested too deeply')})"))
            continue
        problem = "a row must be a JSON object" if not isinstance(row, dict) else check(row)
        if problem:
            errors.append(RowError(number, problem))
        else:
            examples.append(row)
            lines.append(number)
    if not examples:
        detail = f"; first problems: {', '.join(map(str, errors[:3]))}" if errors else ""
        raise error(f"{path} has no usable {what}{detail}", param=param)
    return Dataset(path, examples, errors, hashlib.sha256(raw).hexdigest(), tuple(lines))
