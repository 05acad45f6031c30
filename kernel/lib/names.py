"""Checking a user-given name (a snapshot's, say) against its pattern, with an error that says the rule."""

from __future__ import annotations

import re

from ..errors import InvalidRequestError


def checked_name(name: object, pattern: re.Pattern[str], rule: str, param: str = "name") -> str:
    """`name` when it is a string matching `pattern` whole; else InvalidRequestError stating `rule`."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise InvalidRequestError(f"{rule}, got {name!r}", param=param)
    return name
