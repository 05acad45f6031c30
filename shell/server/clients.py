"""Which client submitted each live request and agent, for `/llmos/ps`'s `client` column: the label a
client sends in `X-Llmos-Client` (llmos's own clients send "llmos run pid 4242", "llmos shell pid 99",
"script.py pid 7"), else how it came ("socket", or "http" and its address). A label is display text
only: it decides nothing (the owner and, with tenants, the key do)."""

from __future__ import annotations

import threading
from typing import Any

from .security import is_owner

HEADER = "X-Llmos-Client"
MAX_LABEL = 64


def label_of(request) -> str:
    given = "".join(ch for ch in request.headers.get(HEADER, "") if ch.isprintable()).strip()[:MAX_LABEL]
    if given:
        return given
    if is_owner(request):
        return "socket"
    return f"http {request.client.host}" if request.client else "http"


class ClientLabels:
    """id -> label of the requests and agents submitted over HTTP, forgotten once they leave `ps`."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, ident: str, label: str) -> None:
        with self._lock:
            self._labels[ident] = label

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` with `client` set ("" for work the kernel started itself); labels of ids no longer
        listed are dropped."""
        live = {str(r.get("id")) for r in rows}
        with self._lock:
            for ident in [i for i in self._labels if i not in live]:
                del self._labels[ident]
            return [{**r, "client": self._labels.get(str(r.get("id")), "")} for r in rows]
