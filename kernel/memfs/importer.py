"""Choosing and reading the host files `mem import` takes in, with a report of what it leaves out.

The walk never leaves the imported root: a symlink whose target resolves outside it is skipped (so is
a broken one), and symlinked directories are not descended into (a target inside the root is
imported at its own path anyway). Hidden files and directories (a name starting with '.', such as
`.env` or `.git/`) are skipped unless `hidden=True`. Only regular files with a text suffix are read,
each up to `max_bytes` (a larger file is skipped, never truncated). Every file left out is reported
with its host path and the reason.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".toml", ".yaml", ".yml", ".csv", ".html", ".org", ".tex",
                 ".c", ".h", ".js", ".ts", ".go", ".rs", ".java", ".sh", ".cfg", ".ini", ".log", ""}


@dataclass(frozen=True)
class Candidate:
    path: Path  # as found under the source directory (what the report names)
    target: Path  # the file to read: `path`, or a symlink's target inside the root
    rel: tuple[str, ...]  # path parts below the source directory


class Skip(Exception):
    """A file left out of an import; the message is the reason."""


def scan(source: Path, *, hidden: bool) -> tuple[list[Candidate], list[dict[str, str]]]:
    """(files to import in path order, skipped entries as {"path", "reason"})."""
    root = source.resolve()
    found: list[Candidate] = []
    skipped: list[dict[str, str]] = []

    def skip(path: str, reason: str) -> None:
        skipped.append({"path": path, "reason": reason})

    def walk(directory: Path, rel: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            skip(str(directory), f"unreadable directory ({exc.strerror or exc})")
            return
        for entry in entries:
            path, parts = Path(entry.path), (*rel, entry.name)
            if entry.name.startswith(".") and not hidden:
                skip(entry.path, "hidden (import hidden files with --hidden)")
                continue
            if entry.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    skip(entry.path, f"symlink to {target}, outside {root}")
                elif target.is_dir():
                    skip(entry.path, "symlink to a directory: not followed (its target is imported at its own path)")
                elif not target.exists():
                    skip(entry.path, "broken symlink")
                elif _is_text_name(entry.name):
                    found.append(Candidate(path, target, parts))
                else:
                    skip(entry.path, "not a text file (by its suffix)")
            elif entry.is_dir(follow_symlinks=False):
                walk(path, parts)
            elif not entry.is_file(follow_symlinks=False):
                skip(entry.path, "not a regular file")
            elif _is_text_name(entry.name):
                found.append(Candidate(path, path, parts))
            else:
                skip(entry.path, "not a text file (by its suffix)")

    walk(root, ())
    return found, skipped


def _is_text_name(name: str) -> bool:
    return Path(name).suffix.lower() in TEXT_SUFFIXES


def read_text(candidate: Candidate, max_bytes: int) -> str:
    """The file's UTF-8 text; raises Skip (with the reason) for a file too large, not a regular file
    (anymore), not UTF-8 or unreadable."""
    try:
        fd = os.open(candidate.target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise Skip(f"unreadable ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Skip("not a regular file")
        if info.st_size > max_bytes:
            raise Skip(f"{info.st_size} bytes, over the import limit of {max_bytes} bytes (--max-bytes)")
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:  # it grew since fstat
        raise Skip(f"over the import limit of {max_bytes} bytes (--max-bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Skip(f"not UTF-8 text (byte {exc.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads
