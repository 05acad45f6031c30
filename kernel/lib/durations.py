"""Durations as users write them in llmos.toml and requests: seconds or Go/Ollama strings."""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s))")


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or an Ollama/Go duration ("250ms", "30s", "5m", "1h30m", "-1m");
    0 is 0, and any negative duration is math.inf (forever). Raises ValueError saying what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"expected seconds or a duration like '5m', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"expected seconds or a duration like '250ms', '30s', '5m', '1h30m' "
                                 f"(negative: forever), got {value!r}") from None
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
            seconds = sign * sum(float(n) * scale[u] for n, u in parts)
    else:
        raise ValueError(f"expected seconds or a duration like '5m', got {type(value).__name__}")
    if math.isnan(seconds):
        raise ValueError(f"expected seconds or a duration like '5m', got {value!r}")
    return math.inf if seconds < 0 else seconds
