"""Server-sent events as the server writes them: one JSON object per `data:` line, and a keep-alive
comment every `KEEPALIVE_S` seconds of silence, so a client can tell a slow request (queued, prefilling a
long prompt, an agent thinking) from a server that stopped answering: a client of llmos gives up after
`shell.client.transport.STREAM_IDLE_S` seconds with nothing at all."""

from __future__ import annotations

import json
from typing import Any

#: seconds of silence on a stream before the server writes a keep-alive comment
KEEPALIVE_S = 10.0
#: the longest cadence a client may ask its stream at (`stream_interval_ms`, the server's and a Client's check)
MAX_STREAM_INTERVAL_MS = 1000
KEEPALIVE = ": keepalive\n\n"
DONE = "data: [DONE]\n\n"


def sse(obj: Any) -> str:
    """One event carrying `obj` as JSON."""
    return "data: " + json.dumps(obj, default=str) + "\n\n"
