"""A bug behind a route still answers in OpenAI's error shape (JSON, `server_error`), never a bare
text 500 or the exception's internals; the server keeps serving."""

from __future__ import annotations

import logging

from starlette.testclient import TestClient

import llmos
from llmos.shell.server.app import create_app


def test_an_unexpected_exception_in_a_route_is_a_json_500_in_the_openai_shape(tmp_path, monkeypatch, caplog):
    kernel = llmos.boot(home=tmp_path, load_entrypoints=False)
    try:
        def broken():
            raise RuntimeError("secret internal detail /home/x")

        client = TestClient(create_app(kernel, allowed_hosts=["testserver"]), raise_server_exceptions=False)
        assert client.get("/health").status_code == 200
        monkeypatch.setattr(kernel, "engines", broken)
        with caplog.at_level(logging.ERROR, logger="llmos.server"):
            r = client.get("/health")
        assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
        error = r.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "internal_error"
        assert "RuntimeError" in error["message"] and "secret" not in error["message"]
        assert "secret internal detail" in caplog.text  # the operator sees it in the log
        monkeypatch.undo()
        assert client.get("/health").status_code == 200
    finally:
        kernel.shutdown()
