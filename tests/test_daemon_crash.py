"""kill -9 of the resident kernel while clients stream (issue 16, "Failure behaviour"): every client gets
an error within 5 s, never a hang (raw HTTP over the socket and TCP, a `llmos.connect()` program and
a `llmos run` in a terminal); `llmos status` says it is down; `llmos up` brings it back with memfs
and sessions intact, the session of the agent it was running marked `crashed` (kernel/proc/sessions.py,
`_mark_crashed`, when the new daemon opens the store)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from llmos.kernel.errors import DaemonNotRunningError
from llmos.shell import daemon as d

from .test_daemon import CHAT, LONG, Daemon, _gone
from .util import LLMOS, free_port, wait_for

NOTE = "kept across kill -9: ünïcødé ✓\nsecond line\n"
#: an agent that is still answering when the daemon dies (one step, no tools: a 256-token answer)
COUNTING = {"goal": "Count from 1 to 1000, separated by commas.", "max_steps": 1, "max_tokens": 4096}
#: seconds from the kill within which every client must have its error
DEADLINE_S = 5.0


@pytest.fixture
def daemon(tmp_path):
    dm = Daemon(tmp_path / "home")
    yield dm
    dm.kill_all()


class Streamer(threading.Thread):
    """One client streaming LONG until it breaks: `first` is set at its first token, `error` and `ended`
    (monotonic time) are what it got."""

    def __init__(self, name: str, client: httpx.Client) -> None:
        super().__init__(name=name, daemon=True)
        self.client = client
        self.first = threading.Event()
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.tokens = 0

    def run(self) -> None:
        try:
            with self.client, self.client.stream("POST", "/v1/completions", json=LONG) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        self.tokens += 1
                        self.first.set()
        except BaseException as exc:  # noqa: BLE001 - what the client gets is the point of the test
            self.error = exc
        self.ended = time.monotonic()


class ClientStreamer(Streamer):
    """The same through `llmos.connect()`: a program's Client must get DaemonNotRunningError."""

    def __init__(self, home) -> None:
        super().__init__("connect()", None)
        self.home = home

    def run(self) -> None:
        import llmos

        try:
            with llmos.connect(home=self.home) as kernel:
                for _chunk in kernel.stream(LONG["prompt"], max_tokens=LONG["max_tokens"], temperature=0):
                    self.tokens += 1
                    self.first.set()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
        self.ended = time.monotonic()


@pytest.mark.cli
@pytest.mark.model
def test_kill_9_while_clients_stream_then_up_restores_memfs_and_marks_the_agent_crashed(daemon):
    info = daemon.up()
    pid, tcp = info["pid"], info["tcp"]
    with daemon.uds() as uds:
        assert uds.put("/llmos/mem/write", json={"path": "/notes/crash.txt", "text": NOTE}).status_code == 200
    # keyless TCP serves the OpenAI routes; the kernel's own API (processes, memfs, agents) stays on the socket
    assert httpx.get(f"{tcp}/v1/models").status_code == 200
    for path in ("/llmos/ps", "/llmos/mem/ls", "/llmos/sessions"):
        refused = httpx.get(f"{tcp}{path}")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "owner_only", path
    assert httpx.post(f"{tcp}/llmos/agents", json={"task": "hi"}).status_code == 403

    # three concurrent streams: two over the Unix socket, one over TCP (no key: loopback)
    clients = [Streamer("uds-1", daemon.uds()), Streamer("tcp", httpx.Client(base_url=tcp, timeout=60)),
               ClientStreamer(daemon.home)]
    for c in clients:
        c.start()
    for c in clients:
        assert c.first.wait(60), f"{c.name} got no token (error: {c.error!r})"
    # and a `llmos run` in a terminal, attached to the daemon
    cli = subprocess.Popen([LLMOS, "run", "--raw", "-n", "3000", "-t", "0", LONG["prompt"]], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "LLMOS_HOME": str(daemon.home), "NO_COLOR": "1"})
    assert len(cli.stdout.read(40)) == 40

    # an agent in the middle of its answer: its session is `running`, hosted by the daemon's pid
    with daemon.uds() as uds:
        agent = uds.post("/llmos/agents", json=COUNTING).json()
        wait_for(lambda: uds.get(f"/llmos/sessions/{agent['session']}").json()["state"] == "running", timeout=30)
    assert all(c.is_alive() and c.error is None for c in clients), [(c.name, c.error) for c in clients]

    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, cli_err = cli.communicate(timeout=DEADLINE_S + 5)
    finally:
        cli.kill()
    cli_ended = time.monotonic()
    for c in clients:
        c.join(DEADLINE_S + 5)
    latencies = {c.name: round(c.ended - killed, 3) for c in clients if c.ended is not None}
    print(f"\nafter kill -9, s until each client's error: {latencies}; errors: "
          f"{ {c.name: type(c.error).__name__ for c in clients} }")
    for c in clients:
        assert not c.is_alive(), f"{c.name} still streaming {DEADLINE_S + 5} s after the kill: a hang"
        expected = DaemonNotRunningError if isinstance(c, ClientStreamer) else (httpx.RemoteProtocolError,
                                                                                httpx.ReadError)
        assert isinstance(c.error, expected), (c.name, repr(c.error))
        assert c.ended - killed < DEADLINE_S, (c.name, latencies)
    assert "does not answer" in str(clients[-1].error) and "llmos up" in str(clients[-1].error)
    assert cli.returncode == 1 and cli_ended - killed < DEADLINE_S, (cli.returncode, cli_err)
    assert "does not answer" in cli_err and "Traceback" not in cli_err, cli_err
    wait_for(lambda: _gone(pid), timeout=5)

    # down, and the stale pid file of the crash named
    down = daemon.llmos("status")
    assert down.returncode == 3, down.stderr
    assert "llmos is not running" in down.stderr and "stale pid file from a crash" in down.stderr, down.stderr
    down = daemon.llmos("status", "--json")
    body = json.loads(down.stdout)
    assert down.returncode == 3 and body["running"] is False and (body["state"], body["pid"]) == ("stale", pid)

    back = daemon.llmos("up", "--port", str(free_port()))
    assert back.returncode == 0 and "llmos is up" in back.stderr, back.stderr
    assert f"replacing the stale pid file of a crashed daemon (pid {pid})" in back.stderr
    new = daemon.remember()
    assert new["pid"] != pid and d.daemon_address(daemon.home).state == "running"

    with daemon.uds() as uds:
        assert uds.get("/llmos/mem/cat", params={"path": "/notes/crash.txt"}).json()["text"] == NOTE
        session = uds.get(f"/llmos/sessions/{agent['session']}").json()
        assert session["kind"] == "agent" and session["state"] == "crashed", session
        assert session["messages"][0] == {"role": "user", "content": COUNTING["goal"]}
        listed = {s["id"]: s["state"] for s in uds.get("/llmos/sessions").json()}
        assert listed[agent["session"]] == "crashed"
        assert uds.get(f"/llmos/agents/{agent['pid']}").status_code == 404  # the process died with its kernel
        reply = uds.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
