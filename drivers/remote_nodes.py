"""Remote nodes: a pool of OpenAI-compatible servers and one streaming generation on them.

Boundaries: HTTP only (httpx, SSE parsing). No scheduling and no token ids: `RemoteStream` turns a
request into a queue of text deltas, picking the least loaded healthy node, retrying on another one
when a node fails before its first delta, and failing clearly when one dies mid-stream (a chat
generation cannot be continued elsewhere). The driver (drivers/remote.py) maps deltas to steps.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx

#: cool-down after a node failure: doubles per consecutive failure, capped
MIN_COOLDOWN_S = 1.0
MAX_COOLDOWN_S = 60.0


class RemoteError(Exception):
    """A node answered with an error; `retry` says whether another node may succeed."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class Node:
    url: str
    api_key: str | None
    max_concurrency: int
    in_flight: int = 0
    served: int = 0
    failures: int = 0  # consecutive
    down_until: float = 0.0
    last_error: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def healthy(self, now: float) -> bool:
        return now >= self.down_until

    def mark_failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.down_until = time.monotonic() + min(MAX_COOLDOWN_S, MIN_COOLDOWN_S * 2 ** (self.failures - 1))

    def mark_ok(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy(time.monotonic()), "in_flight": self.in_flight,
                "served": self.served, "failures": self.failures, "last_error": self.last_error}


class NodePool:
    """The nodes of one remote model; `acquire` balances by load (in flight / capacity) and health."""

    def __init__(self, nodes: list[dict[str, Any]], max_concurrency: int, timeout: float) -> None:
        self.nodes = [Node(n["url"], n.get("api_key"), max_concurrency) for n in nodes]
        self.timeout = timeout
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)))
        self._lock = threading.Condition()

    @property
    def capacity(self) -> int:
        return sum(n.max_concurrency for n in self.nodes)

    def check(self, model: str) -> list[str]:
        """Ask every node for its models; returns the problems (empty when all serve `model`)."""
        problems = []
        for node in self.nodes:
            try:
                r = self.client.get(f"{node.url}/v1/models", headers=node.headers, timeout=5.0)
                r.raise_for_status()
                ids = {m.get("id") for m in r.json().get("data", [])}
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                node.mark_failed(f"{type(exc).__name__}: {exc}")
                problems.append(f"{node.url}: {type(exc).__name__}: {exc}")
                continue
            if model not in ids:
                node.mark_failed(f"does not serve {model}")
                problems.append(f"{node.url} does not serve {model!r} (it serves {sorted(map(str, ids))[:8]})")
        return problems

    def acquire(self, exclude: set[str], cancelled: threading.Event) -> Node | None:
        """The least loaded healthy node not in `exclude`, waiting while all are busy; None when
        no eligible node is healthy (or the stream was cancelled)."""
        with self._lock:
            while not cancelled.is_set():
                now = time.monotonic()
                eligible = [n for n in self.nodes if n.url not in exclude and n.healthy(now)]
                if not eligible:
                    return None
                free = [n for n in eligible if n.in_flight < n.max_concurrency]
                if free:
                    node = min(free, key=lambda n: (n.in_flight / n.max_concurrency, n.served))
                    node.in_flight += 1
                    return node
                self._lock.wait(0.05)
            return None

    def release(self, node: Node, *, error: str | None) -> None:
        with self._lock:
            node.in_flight -= 1
            if error is None:
                node.served += 1
                node.mark_ok()
            else:
                node.mark_failed(error)
            self._lock.notify_all()

    def close(self) -> None:
        self.client.close()


#: what a stream's queue holds besides text deltas
END = object()


@dataclass
class Failure:
    message: str


@dataclass
class RemoteStream:
    """One generation: `payload` is an OpenAI request body without `model`/`stream`; `chat` picks
    /v1/chat/completions (else /v1/completions). A worker thread fills `events`."""

    pool: NodePool
    model: str
    chat: bool
    payload: dict[str, Any]
    on_event: Any  # callable() notified after each event
    events: deque = field(default_factory=deque)
    cancelled: threading.Event = field(default_factory=threading.Event)
    emitted: int = 0
    node: str | None = None
    _response: Any = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="llmos-remote-stream", daemon=True).start()

    def cancel(self) -> None:
        self.cancelled.set()
        response = self._response
        if response is not None:
            try:
                response.close()  # the node sees the disconnect and cancels its request
            except Exception:  # noqa: BLE001 - closing from another thread is best effort
                pass

    def _push(self, item: Any) -> None:
        self.events.append(item)
        self.on_event()

    def _run(self) -> None:
        tried: set[str] = set()
        errors: list[str] = []
        while not self.cancelled.is_set():
            node = self.pool.acquire(tried, self.cancelled)
            if node is None:
                if not self.cancelled.is_set():
                    detail = "; ".join(errors) or "every node is marked down after recent failures"
                    self._push(Failure(f"no remote node could serve {self.model}: {detail}"))
                return
            tried.add(node.url)
            self.node = node.url
            try:
                for delta in self._generate(node):
                    if self.cancelled.is_set():
                        break
                    self.emitted += 1
                    self._push(delta)
            except Exception as exc:  # noqa: BLE001 - whatever a node does ends this request clearly, slot freed
                if self.cancelled.is_set():  # our own close() interrupted the read
                    self.pool.release(node, error=None)
                    return
                retry = getattr(exc, "retry", True)
                error = f"{node.url}: {type(exc).__name__}: {exc}"
                self.pool.release(node, error=error if retry else None)
                if self.emitted:
                    self._push(Failure(f"remote node {node.url} failed mid-stream after {self.emitted} "
                                       f"tokens ({type(exc).__name__}: {exc}); the partial answer was kept"))
                    return
                if not retry:
                    self._push(Failure(f"remote node {node.url} refused the request: {exc}"))
                    return
                errors.append(error)
                continue
            self.pool.release(node, error=None)
            self._push(END)
            return

    def _generate(self, node: Node) -> Iterator[str]:
        path = "/v1/chat/completions" if self.chat else "/v1/completions"
        body = {**self.payload, "model": self.model, "stream": True}
        with self.pool.client.stream("POST", node.url + path, json=body, headers=node.headers) as response:
            self._response = response
            if response.status_code != 200:
                response.read()
                raise RemoteError(f"HTTP {response.status_code}: {_error_message(response)}",
                                  retry=response.status_code in (408, 429) or response.status_code >= 500)
            for line in response.iter_lines():
                if self.cancelled.is_set():
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise RemoteError(f"sent a chunk that is not JSON: {data[:80]!r}", retry=True) from None
                text = _delta_text(chunk, self.chat)
                if text:
                    yield text
        raise RemoteError("the stream ended without [DONE]", retry=True)


def _delta_text(chunk: Any, chat: bool) -> str:
    """The text of one streamed chunk; RemoteError for an error chunk or one not in OpenAI's shape."""
    if isinstance(chunk, dict) and "error" in chunk:
        error = chunk["error"]
        raise RemoteError(error.get("message", str(error)) if isinstance(error, dict) else str(error), retry=False)

    def malformed(what: str) -> RemoteError:
        return RemoteError(f"sent a malformed stream chunk ({what}): {json.dumps(chunk)[:120]}", retry=True)

    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        raise malformed("no choices list")
    if not choices:  # a usage-only chunk
        return ""
    if not isinstance(choices[0], dict):
        raise malformed("choices[0] is not an object")
    part = (choices[0].get("delta") or {}) if chat else choices[0]
    text = part.get("content" if chat else "text") if isinstance(part, dict) else None
    if not isinstance(part, dict) or not isinstance(text, (str, type(None))):
        raise malformed("no text in choices[0]")
    return text or ""


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return error.get("message", "") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return response.text[:200]
