"""Files only their owner reads: $LLMOS_HOME holds conversations, prompts, keys and memory, so it is
made 0700 (the files in it then stay private whatever the umask made them), and the session database
is created 0600 (SQLite gives its -wal and -shm files the database's mode)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("llmos.kernel")


def private_home(home: Path) -> None:
    """Create `home` 0700, or take group and other access away from an existing one (logged)."""
    home = Path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(home, mode & 0o700)
            log.warning("%s was readable by other users (mode %o): made it %o", home, mode, mode & 0o700)
        except OSError as exc:  # not ours to change: say so, once per boot
            log.warning("%s is readable by other users (mode %o) and could not be changed: %s", home, mode, exc)


def private_file(path: Path) -> None:
    """Create `path` (empty) as 0600 when it is missing; make an existing one and its SQLite side files 0600."""
    path = Path(path)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # an existing file is left as it is
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if stat.S_IMODE(p.stat().st_mode) & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass
