"""grep over memfs files: Python's `regex` engine with the GIL released and a deadline, so a pattern
that backtracks exponentially ("(a|aa)+$" on a line of a's and a b) is refused with a 400 after a few seconds,
never a frozen kernel (the stdlib `re` can neither be interrupted nor time out)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidRequestError

#: seconds a grep may spend matching before its pattern is refused
GREP_TIMEOUT_S = 2.0


def grep_lines(rows: Iterable[tuple[str, str]], pattern: str, *, ignore_case: bool = False,
               timeout: float = GREP_TIMEOUT_S, deadline: float | None = None, where: str = "/") -> list[dict[str, Any]]:
    """{"path", "line", "text"} for each line of (path, text) `rows` that `pattern` matches; past
    `deadline` (default: `timeout` seconds from now) an InvalidRequestError."""
    import regex

    try:
        rx = regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)
    except regex.error as exc:
        raise InvalidRequestError(f"bad regular expression: {exc}", param="pattern") from None
    deadline = time.monotonic() + timeout if deadline is None else deadline
    out = []
    try:
        for path, text in rows:
            for number, line in enumerate(text.splitlines(), start=1):
                if rx.search(line, concurrent=True, timeout=max(0.001, deadline - time.monotonic())):
                    out.append({"path": path, "line": number, "text": line})
    except TimeoutError:
        raise InvalidRequestError(f"the pattern took over {timeout:g} s on {where}: simplify it (nested "
                                  f"repetition like (a|aa)+ backtracks exponentially)", param="pattern") from None
    return out
