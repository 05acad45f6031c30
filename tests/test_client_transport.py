"""The client's transport against a real socket server that misbehaves: a stream that goes silent is a
clear `DaemonNotRunningError` after the idle limit, never a hang (no model, no llmos server)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from llmos.kernel.errors import DaemonNotRunningError
from llmos.shell.client import transport as t


@pytest.fixture
def silent_server():
    """Answers any request with the head of an SSE stream, then says nothing more."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()


def test_a_stream_that_goes_silent_is_an_error_after_the_idle_limit(silent_server, monkeypatch):
    monkeypatch.setattr(t, "STREAM_IDLE_S", 0.5)
    transport = t.Transport(url=silent_server)
    stream = t.OpenStream(transport, "POST", "/v1/completions", json={"prompt": "x"})
    start = time.monotonic()
    with pytest.raises(DaemonNotRunningError, match=r"sent nothing for 0\.5 s"):
        list(stream.objects())
    assert time.monotonic() - start < 10  # the limit, not forever
    transport.close()


def test_keep_alive_comments_are_not_events():
    class Lines:
        def iter_lines(self):
            yield from [": keepalive", "", 'data: {"a": 1}', "", ": keepalive", "data: [DONE]", 'data: {"b": 2}']

    assert list(t.events(Lines())) == [{"a": 1}]
