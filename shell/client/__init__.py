"""Programs and the CLI attached to a served kernel: `connect()` returns a `Client` with the `Kernel`
surface (kernel/api.py `KernelAPI`, which both implement).

    import llmos
    with llmos.connect() as kernel:        # the resident kernel of $LLMOS_HOME (`llmos up`)
        print(kernel.generate("Hi", max_tokens=16).text)

Where: `url` (or LLMOS_URL): `http://HOST:PORT` over TCP, with `api_key` (or LLMOS_API_KEY), or
`unix:PATH` for a socket; else the resident kernel of `home` (LLMOS_HOME) over its Unix socket.
"""

from __future__ import annotations

import os
from pathlib import Path

from .client import Client
from .transport import Transport

__all__ = ["Client", "connect"]


def connect(url: str | None = None, api_key: str | None = None, *, home: str | Path | None = None,
            stream_interval_ms: int | None = None) -> Client:
    """A `Client` of the served kernel at `url`, else of the resident kernel of `home`. With
    `stream_interval_ms` its streams bring at most one delta per that many milliseconds (the HTTP
    extension of that name): a client that draws at a frame rate reads no more often than it draws.

    Raises DaemonNotRunningError (nothing answers; the message says how to start it) or
    VersionMismatchError (the kernel runs another llmos version)."""
    url = url or os.environ.get("LLMOS_URL") or None
    api_key = api_key or os.environ.get("LLMOS_API_KEY") or None
    if url is not None and url.startswith("unix:"):
        transport = Transport(socket=url[len("unix:"):].removeprefix("//"), api_key=api_key)
    elif url is not None:
        transport = Transport(url=url, api_key=api_key)
    else:
        transport = Transport(socket=_resident_socket(home), api_key=api_key)
    return Client(transport, stream_interval_ms=stream_interval_ms)


def _resident_socket(home: str | Path | None) -> str:
    from llmos.kernel.config import default_home

    from ..daemon import daemon_address, probe

    home = Path(home).expanduser() if home is not None else default_home()
    probe(home)  # not running, or another version: a clear error now
    return daemon_address(home).socket
