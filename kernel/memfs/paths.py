"""memfs paths: absolute POSIX-style, validated before anything touches storage.

Rejected with `MemPathError`: relative paths, `.` or `..` segments, NUL and other control
characters, empty segments (`//`), a segment over 255 bytes or a path over 4096 bytes. Nothing a
path says can reach outside its volume: paths are keys in SQLite, never filesystem paths.
"""

from __future__ import annotations

from ..errors import InvalidRequestError

MAX_SEGMENT = 255
MAX_PATH = 4096


class MemPathError(InvalidRequestError):
    code = "invalid_path"


class MemNotFoundError(InvalidRequestError, FileNotFoundError):
    code = "not_found"


def normalize(path: str, *, param: str = "path") -> str:
    """The canonical form of a valid path ("/" or "/a/b", no trailing slash)."""
    if not isinstance(path, str) or not path:
        raise MemPathError("a memfs path must be a non-empty string such as /notes/todo.md", param=param)
    if not path.startswith("/"):
        raise MemPathError(f"memfs paths are absolute: use /{path.lstrip('./')} rather than {path!r}", param=param)
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise MemPathError("a memfs path may not contain NUL or control characters", param=param)
    if len(path.encode()) > MAX_PATH:
        raise MemPathError(f"a memfs path is at most {MAX_PATH} bytes", param=param)
    body = path.rstrip("/")
    if not body:
        return "/"
    segments = body[1:].split("/")
    for seg in segments:
        if seg in ("", ".", ".."):
            raise MemPathError(f"{path!r} has an empty, '.' or '..' segment: memfs paths are canonical",
                               param=param)
        if len(seg.encode()) > MAX_SEGMENT:
            raise MemPathError(f"the name {seg[:40]!r}... is over {MAX_SEGMENT} bytes", param=param)
    return "/" + "/".join(segments)


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def is_under(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory + "/")


def like_prefix(directory: str) -> str:
    """A SQL LIKE pattern (escape '\\') for everything strictly below `directory`."""
    escaped = directory.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return ("" if directory == "/" else escaped) + "/%"
