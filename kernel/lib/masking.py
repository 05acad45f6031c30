"""Redaction over structures: maskers see string values, never serialized JSON text.

A masker (`register_redactors`, `fn(text) -> text`) run over JSON text would see escapes
(`jos\\u00e9@x.com`, `\\n555-0134`): it misses what follows an escape and can break the JSON it
rewrites. So the kernel masks the strings of a structure and serializes afterwards
(`redact_value`), and a string that is itself JSON (a tool call's `arguments`, a tool result fed
back to a model) is decoded, masked the same way and encoded again (`redact_text`).

Keys are masked too: a free-form object's keys (tool arguments, MCP payloads) can hold data as well
as its values can. Two keys masked to the same text keep the last value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

Redact = Callable[[str], str]

#: nesting followed before the rest is replaced by a marker (a cycle or a pathological structure)
MAX_DEPTH = 64
#: ints above this many bits are stored as a description: json.dumps refuses ints over 4,300 digits
MAX_INT_BITS = 14_000


def redact_text(text: str, redact: Redact) -> str:
    """`text` through `redact`; a JSON object, array or string is masked inside and re-encoded
    (left byte-for-byte alone when no masker changed anything)."""
    head = text.lstrip()[:1]
    if head in ("{", "[", '"'):
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError):
            decoded = None
        if isinstance(decoded, (dict, list, str)):
            masked = redact_value(decoded, redact)
            return text if masked == decoded else json.dumps(masked, ensure_ascii=False)
    return redact(text)


def redact_value(value: Any, redact: Redact, _depth: int = 0) -> Any:
    """A JSON-able copy of `value` with every string (keys included) masked; other objects become
    their masked repr, ints too large for JSON a short description."""
    if _depth > MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, str):
        return redact_text(value, redact)
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= MAX_INT_BITS else f"[int of {value.bit_length():,} bits]"
    if isinstance(value, dict):
        return {redact_text(str(k), redact): redact_value(v, redact, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v, redact, _depth + 1) for v in value]
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not lose the entry
        text = f"[{type(value).__name__}: repr failed: {type(exc).__name__}]"
    return redact(text[:10_000])


def dumps_redacted(value: Any, redact: Redact) -> str:
    """One line of JSON: `value`'s strings masked first, then serialized."""
    return json.dumps(redact_value(value, redact), ensure_ascii=False)


def redact_messages(messages: list[dict[str, Any]] | None, redact: Redact) -> list[dict[str, Any]] | None:
    """Chat messages with each text `content` masked (other fields and non-text contents kept)."""
    if messages is None:
        return None
    return [{**m, "content": redact_text(m["content"], redact)} if isinstance(m.get("content"), str) else m
            for m in messages]


@dataclass(frozen=True)
class Redactor:
    name: str
    fn: Redact
    plugin: str


class Redactors:
    """The maskers plugins register (the `register_redactors` hook), collected on first use and run
    in order: `Kernel.redact`."""

    def __init__(self, plugins: Any) -> None:
        self._plugins = plugins
        self._found: list[Redactor] | None = None

    def __call__(self, text: str) -> str:
        if self._found is None:
            found = self._plugins.collect("register_redactors", lambda plugin, name, fn: Redactor(name, fn, plugin))
            self._found = list(found.values())
        for r in self._found:
            text = r.fn(text)
        return text
