"""Models llmos made itself (`llmos mod merge`, `llmos quantize`): one directory per model under
`$LLMOS_HOME/models/local/NAME/`, holding the model file and `model.json` (what it was made from).

A model is written in a hidden temporary directory and renamed into place once complete, so a crash
leaves no half-written model under a name; an existing name (built-in, configured or local) is never
overwritten. The registry lists these after the built-in and configured names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import InvalidRequestError
from ..lib.names import checked_name

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
INFO = "model.json"
#: a temporary directory this old belongs to no running merge or quantize
STALE_S = 86400


class ModelExistsError(InvalidRequestError):
    """A model of that name exists: llmos never overwrites one."""

    code = "model_exists"


class LocalModels:
    def __init__(self, home: Path) -> None:
        self.root = home / "models" / "local"
        self._cache: tuple[int, list[tuple[str, Path, dict[str, Any]]]] | None = None

    def entries(self) -> list[tuple[str, Path, dict[str, Any]]]:
        """(name, model file, its model.json) of each complete local model; read again only when the
        directory changed (a model is added or removed by renaming its directory)."""
        try:
            stamp = self.root.stat().st_mtime_ns
        except OSError:
            return []
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, list(self._scan()))
        return self._cache[1]

    def _scan(self) -> Iterator[tuple[str, Path, dict[str, Any]]]:
        for d in sorted(self.root.iterdir()):
            try:
                info = json.loads((d / INFO).read_text())
                path = d / info["file"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a temporary or damaged directory: not a model
            if NAME.fullmatch(d.name) and path.is_file():
                yield d.name, path, info

    def check_new(self, name: object, taken: list[str]) -> str:
        """`name` if a new model may take it; else why not."""
        name = checked_name(name, NAME, "a model name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                                        "letter or digit", param="as")
        if name in taken or (self.root / name).exists():
            raise ModelExistsError(f"a model named {name!r} exists: choose another name (llmos never overwrites "
                                   "a model)", param="as")
        return name

    def create(self, name: str, file_name: str, build, info: dict[str, Any]) -> Path:
        """Run `build(path)` to write the model file in a temporary directory, then move it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*-*"):  # what a killed merge or quantize left (a day old: not running)
            if time.time() - stale.stat().st_mtime > STALE_S:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            build(tmp / file_name)
            record = {**info, "file": file_name, "created": time.time(), "bytes": (tmp / file_name).stat().st_size}
            (tmp / INFO).write_text(json.dumps(record, indent=2))
            final = self.root / name
            try:
                if final.exists():
                    raise FileExistsError(final)
                os.rename(tmp, final)  # a non-empty directory of that name makes the rename fail
            except OSError:
                raise ModelExistsError(f"a model named {name!r} appeared meanwhile: nothing overwritten",
                                       param="as") from None
            return final / file_name
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
