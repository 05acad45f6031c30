"""Small helpers shared by tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmos.kernel.errors import RequestCancelledError


def wait_for(condition, timeout: float = 5.0, msg=lambda: "") -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached: {msg()}"
        time.sleep(0.005)


def cancel_mid_stream(kernel, drv, prompt: str, **kw) -> None:
    """Start a long request, cancel it after a few tokens, and check the driver freed its state."""
    h = kernel.submit(prompt, max_tokens=300, ignore_eos=True, **kw)
    wait_for(lambda: h.request.metrics.output_tokens >= 3, timeout=60)
    h.cancel()
    with pytest.raises(RequestCancelledError):
        h.result(10)
    wait_for(lambda: drv.stats()["active_sequences"] == 0, msg=drv.stats)
    assert len(h.result(0, check=False).token_ids) < 300


#: the `llmos` command installed next to the interpreter running the tests
LLMOS = str(Path(sys.executable).parent / "llmos")


def run_llmos(*args: str, stdin: str | None = None, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI like a user would (plain output, wide terminal), with extra variables."""
    return subprocess.run([LLMOS, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start `llmos serve` on a free loopback port with its own LLMOS_HOME; wait until healthy."""
    import httpx

    port = free_port()
    log = Path(tmp_path) / f"serve-{port}.log"  # a file, not a pipe: a full pipe would block the server
    with open(log, "w") as fh:
        proc = subprocess.Popen([LLMOS, "serve", "--port", str(port), *args], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "LLMOS_HOME": str(tmp_path / "home"), **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
    proc.kill()
    raise AssertionError("server did not become healthy")


def cancelled_total(base: str, model: str = "smollm2", headers: dict[str, str] | None = None) -> int:
    """The server's llmos_requests_total of cancelled requests for `model` (0 before the first one)."""
    import httpx

    line = f'llmos_requests_total{{model="{model}",status="finished_cancelled"}} '
    metrics = httpx.get(f"{base}/metrics", headers=headers).text
    return next((int(float(m.split()[-1])) for m in metrics.splitlines() if m.startswith(line)), 0)
