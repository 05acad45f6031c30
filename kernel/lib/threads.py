"""Running a call on a thread that ends with it.

An OpenMP runtime (libgomp, under torch's CPU kernels) keeps a team of worker threads for every thread
that ever ran a parallel region, for the life of that thread. Once there are more of them than cores,
libgomp stops spin-waiting at every barrier of every team and sleeps on futexes instead, so each small
parallel op in a decode step pays wake-ups: measured on 2 cores, one memfs embedding on a long-lived
worker thread took the torch driver's mixed-adapter batches from 73 to 50 tokens/s for the rest of the
process. A team goes away with its thread, so occasional torch work (embedding, a baseline in a
benchmark) runs through `in_passing_thread` and leaves the decode thread's team alone.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def in_passing_thread(fn: Callable[..., T], *args, name: str | None = None) -> T:
    """fn(*args) on a new thread that ends when it returns; its result, or its exception raised here."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=name or f"{threading.current_thread().name}-call", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
