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


class ModelExistsError(InvalidRequestError):
    """A model of that name exists: llmos never overwrites one."""

    code = "model_exists"


class LocalModels:
    def __init__(self, home: Path) -> None:
        self.root = home / "models" / "local"

    def entries(self) -> Iterator[tuple[str, Path, dict[str, Any]]]:
        """(name, model file, its model.json) of each complete local model."""
        if not self.root.is_dir():
            return
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
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            build(tmp / file_name)
            record = {**info, "file": file_name, "created": time.time(), "bytes": (tmp / file_name).stat().st_size}
            (tmp / INFO).write_text(json.dumps(record, indent=2))
            final = self.root / name
            if final.exists():
                raise ModelExistsError(f"a model named {name!r} appeared meanwhile: nothing overwritten", param="as")
            os.rename(tmp, final)
            return final / file_name
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
