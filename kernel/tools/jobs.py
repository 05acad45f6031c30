"""Background jobs (fine-tuning, ingest...): long work with progress, run on a thread of its own.

A job's function receives `progress(event: dict)` and a `stop` event; `job.cancel()` sets `stop`, and
the function is expected to stop at its next checkpoint (fine-tuning saves a resumable one).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

from ..errors import LlmosError

_ids = itertools.count(1)


class JobFailedError(LlmosError):
    code = "job_failed"


class Job:
    def __init__(self, kind: str, fn: Callable[[Callable[[dict], None], threading.Event], Any]) -> None:
        self.id = f"job-{next(_ids)}"
        self.kind = kind
        self.started = time.monotonic()
        self.status = "running"
        self.events: list[dict[str, Any]] = []
        self.progress: dict[str, Any] = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=f"llmos-{self.id}", daemon=True)
        self._thread.start()

    def _report(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.progress.update({k: v for k, v in event.items() if k != "event"})

    def _run(self, fn) -> None:
        try:
            self._result = fn(self._report, self._stop)
            self.status = "done"
        except BaseException as exc:  # noqa: BLE001 - delivered through wait()
            self._error = exc
            self.status = "cancelled" if self._stop.is_set() else "failed"
        finally:
            self._done.set()

    def cancel(self) -> None:
        self._stop.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """The job's result; re-raises its error (typed llmos errors as they are)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.id} is still running after {timeout}s")
        if self._error is not None:
            if isinstance(self._error, LlmosError):
                raise self._error
            raise JobFailedError(f"{self.kind} {self.id} failed: {type(self._error).__name__}: {self._error}") \
                from self._error
        return self._result

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "status": self.status, "age_s": time.monotonic() - self.started,
                **self.progress}
