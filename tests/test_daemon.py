"""The resident kernel (`llmos up`, `status`, `down`, `logs`) as real processes, each test with its own
LLMOS_HOME; the `daemon` fixture kills whatever daemon a test leaves (by its pid file), even on failure.
Unit tests of the lock, the socket, the owner rule and the version check need no daemon."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmos.kernel.errors import DaemonNotRunningError, VersionMismatchError
from llmos.shell import daemon as d
from llmos.shell.server.security import Guard

from .util import LLMOS, free_port, run_llmos, wait_for

KEY = "daemon-test-key"
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
        "temperature": 0}
LONG = {"model": "smollm2", "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 3000, "temperature": 0,
        "stream": True}


class Daemon:
    """llmos commands against one LLMOS_HOME; remembers every daemon pid it saw, to kill at teardown."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pids: set[int] = set()

    def llmos(self, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        result = run_llmos(*args, timeout=timeout, env={"LLMOS_HOME": str(self.home), **(env or {})})
        self.remember()
        return result

    def remember(self) -> dict:
        info = d.read_pid_file(self.home) or {}
        if info:
            self.pids.add(info["pid"])
        return info

    def up(self, *args: str, env: dict | None = None) -> dict:
        result = self.llmos("up", "--port", str(free_port()), *args, env=env)
        assert result.returncode == 0, result.stderr
        return self.remember()

    def uds(self, timeout: float = 60) -> httpx.Client:
        return d.uds_client(d.socket_path(self.home), timeout)

    def kill_all(self) -> None:
        self.remember()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def daemon(tmp_path):
    dm = Daemon(tmp_path / "home")
    yield dm
    dm.kill_all()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- unit tests: no daemon ---------------------------------------------------------------------------

def test_check_version():
    d.check_version("1.2.3", "1.2.3")
    with pytest.raises(VersionMismatchError, match=r"runs llmos 1\.2\.3 but this client is llmos 1\.3\.0") as exc:
        d.check_version("1.2.3", "1.3.0")
    assert (exc.value.daemon, exc.value.client, exc.value.code) == ("1.2.3", "1.3.0", "version_mismatch")


def test_states_from_lock_and_pid_file(tmp_path):
    home = tmp_path
    assert d.daemon_address(home).state == "down"
    lock = d.DaemonLock(home)
    lock.acquire()
    assert d.daemon_address(home).state == "starting"
    lock.write_pid_file(d.DaemonInfo("running", pid=os.getpid(), version="x", socket="/s", tcp="http://h:1"))
    assert stat.S_IMODE(d.pid_path(home).stat().st_mode) == 0o600
    info = d.daemon_address(home)
    assert (info.state, info.pid, info.socket) == ("running", os.getpid(), "/s")
    with pytest.raises(Exception, match=rf"already running for .*pid {os.getpid()}"):
        d.DaemonLock(home).acquire()  # flock: a second open file description conflicts, in-process too
    os.close(lock._fd)  # the process "dies": its lock goes, its pid file stays
    lock._fd = None
    assert d.daemon_address(home).state == "stale"
    with pytest.raises(DaemonNotRunningError, match="stale pid file from a crash"):
        d.probe(home)
    fresh = d.DaemonLock(home)
    fresh.acquire()  # a stale lock file is taken over, the stale pid file removed at once
    assert d.daemon_address(home).state == "starting" and not d.pid_path(home).exists()
    fresh.release()
    assert d.daemon_address(home).state == "down"


def test_bind_unix_is_0600_from_the_start_and_replaces_only_stale_sockets(tmp_path):
    path = tmp_path / "s.sock"
    old = os.umask(0)  # even with a permissive umask
    try:
        sock = d.bind_unix(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(Exception, match="another server answers"):
        d.bind_unix(path)  # a live listener is refused, never removed
    sock.close()  # closed without unlinking: a stale socket file
    d.bind_unix(path).close()  # replaced
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(Exception, match="not a socket"):
        d.bind_unix(plain)
    assert plain.read_text() == "x"


@pytest.mark.parametrize("server, owner", [
    (("/h/llmos.sock", None), True),        # a connection accepted on the daemon's Unix socket
    (("127.0.0.1", 8000), False),           # TCP: getsockname() always has a port
    (("/h/llmos.sock", 8000), False),
    (("/other.sock", None), False),         # another Unix socket
    (None, False),
])
def test_owner_is_read_from_the_accepting_socket(server, owner):
    guard = Guard(lambda *a: None, owner_socket="/h/llmos.sock")
    assert guard.is_owner({"type": "http", "server": server, "headers": []}) is owner
    assert Guard(lambda *a: None).is_owner({"type": "http", "server": ("/h/llmos.sock", None)}) is False


def test_status_and_down_when_never_started(daemon):
    result = daemon.llmos("status")
    assert result.returncode == 3 and "llmos is not running" in result.stderr
    result = daemon.llmos("status", "--json")
    assert result.returncode == 3 and json.loads(result.stdout)["running"] is False
    result = daemon.llmos("down")
    assert result.returncode == 0 and "not running" in result.stderr
    result = daemon.llmos("logs")
    assert result.returncode == 1 and "no log yet" in result.stderr


# --- real daemons --------------------------------------------------------------------------------------

@pytest.mark.cli
@pytest.mark.model
def test_lifecycle_socket_key_crash_and_restart(daemon):
    up = daemon.llmos("up", "--port", str(free_port()), env={"LLMOS_API_KEY": KEY})
    assert up.returncode == 0 and "llmos is up" in up.stderr, up.stderr
    info = daemon.remember()
    sock = d.socket_path(daemon.home)
    assert f"socket: {sock}" in up.stderr and info["tcp"] in up.stderr
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)

    status = daemon.llmos("status", "--json")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["running"] and body["pid"] == info["pid"] and body["version"] == info["version"]
    assert body["listen"] == {"tcp": info["tcp"], "socket": str(sock)} and body["uptime_s"] >= 0
    (model,) = body["models"]
    assert model["name"] == "smollm2" and model["driver"] == "llamacpp" and model["memory_bytes"] > 10 << 20
    assert body["clients"]["connections"] >= 1 and body["queue"] == {"waiting": 0, "running": 0}

    with daemon.uds() as uds:  # the owner: no key
        reply = uds.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        assert uds.get("/llmos/status").status_code == 200
    tcp = info["tcp"]
    assert httpx.post(f"{tcp}/v1/chat/completions", json=CHAT, timeout=60).status_code == 401
    spoof = {"Host": str(sock), "X-Forwarded-For": "unix:" + str(sock), "Forwarded": "for=unix"}
    assert httpx.get(f"{tcp}/llmos/status", headers=spoof).status_code == 401  # headers never make an owner
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{tcp}/v1/chat/completions", json=CHAT, headers=auth, timeout=60).status_code == 200
    assert httpx.get(f"{tcp}/llmos/status", headers=auth).json()["pid"] == info["pid"]

    again = daemon.llmos("up")  # a second up reports the running one
    assert again.returncode == 0 and f"already running (pid {info['pid']}" in again.stderr
    serve = daemon.llmos("serve", "--socket", str(daemon.home / "other.sock"), "--port", str(free_port()))
    assert serve.returncode == 1 and f"already running for {daemon.home} (pid {info['pid']}" in serve.stderr

    with daemon.uds() as uds:  # state that must survive a crash: a memfs file and a session
        assert uds.put("/llmos/mem/write", json={"path": "/notes/a.txt", "text": "kept across a crash"}
                       ).status_code == 200
        agent = uds.post("/llmos/agents", json={"goal": "Say hi.", "max_steps": 1, "max_tokens": 16}).json()
        wait_for(lambda: uds.get(f"/llmos/agents/{agent['pid']}").json()["state"] not in ("running", "waiting"),
                 timeout=60)

    # kill -9 while a client streams: the client gets an error at once, never a hang
    errors: list[float] = []
    first = threading.Event()

    def stream():
        try:
            with daemon.uds() as uds, uds.stream("POST", "/v1/completions", json=LONG) as r:
                for _line in r.iter_lines():
                    first.set()
        except httpx.HTTPError:
            errors.append(time.monotonic())

    client = threading.Thread(target=stream)
    client.start()
    assert first.wait(60)
    os.kill(info["pid"], signal.SIGKILL)
    killed = time.monotonic()
    client.join(10)
    assert not client.is_alive() and errors and errors[0] - killed < 5
    wait_for(lambda: _gone(info["pid"]), timeout=5)

    down = daemon.llmos("status")
    assert down.returncode == 3 and "stale pid file from a crash" in down.stderr

    back = daemon.llmos("up", "--port", str(free_port()))
    assert back.returncode == 0 and "replacing the stale pid file" in back.stderr, back.stderr
    new = daemon.remember()
    assert new["pid"] != info["pid"]
    with daemon.uds() as uds:
        assert uds.get("/llmos/mem/cat", params={"path": "/notes/a.txt"}).json()["text"] == "kept across a crash"
        assert agent["session"] in [s["id"] for s in uds.get("/llmos/sessions").json()]
    stop = daemon.llmos("down")
    assert stop.returncode == 0 and f"llmos stopped (pid {new['pid']})" in stop.stderr
    assert _gone(new["pid"]) and not sock.exists() and not d.pid_path(daemon.home).exists()


@pytest.mark.cli
@pytest.mark.model
def test_keep_alive_over_http_and_down_lets_running_requests_finish_then_cancels_after_the_grace(daemon):
    info = daemon.up()
    with daemon.uds() as uds:  # keep_alive per request over HTTP (the daemon's own is forever here)
        bad = uds.post("/v1/chat/completions", json={**CHAT, "keep_alive": "a while"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"
        assert uds.get("/llmos/status").json()["models"][0]["keep_alive_s"] is None
        assert uds.post("/v1/chat/completions", json={**CHAT, "keep_alive": 0}).status_code == 200
        wait_for(lambda: uds.get("/llmos/status").json()["models"] == [], timeout=5)  # unloaded right after
    results: dict[str, object] = {}

    def short():
        with daemon.uds() as uds:
            results["short"] = uds.post("/v1/chat/completions", json={**CHAT, "max_tokens": 48})

    def long():
        started = time.monotonic()
        try:
            with daemon.uds() as uds, uds.stream("POST", "/v1/completions", json=LONG) as r:
                results["long_lines"] = sum(1 for line in r.iter_lines() if line.startswith("data: {"))
        except httpx.HTTPError as exc:
            results["long_error"] = exc
        results["long_s"] = time.monotonic() - started

    def long_plain():  # not streamed: cancelled after the grace, it is answered 503 (uvicorn alone says 500)
        with daemon.uds() as uds:
            results["long_plain"] = uds.post("/v1/completions", json={**LONG, "stream": False})

    threads = [threading.Thread(target=short), threading.Thread(target=long), threading.Thread(target=long_plain)]
    for t in threads:
        t.start()
    with daemon.uds() as uds:
        wait_for(lambda: uds.get("/llmos/status").json()["queue"]["running"] >= 3, timeout=30)
    started = time.monotonic()
    down = daemon.llmos("down", "--grace", "3")
    took = time.monotonic() - started
    for t in threads:
        t.join(30)
    assert down.returncode == 0, down.stderr
    reply = results["short"]
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]  # finished in the grace
    assert results["long_s"] < 20  # 3000 tokens take ~35 s here: it was cancelled after the grace period
    assert results["long_plain"].status_code == 503, results["long_plain"].text
    assert took < 20 and _gone(info["pid"])
    assert not d.socket_path(daemon.home).exists() and not d.pid_path(daemon.home).exists()


@pytest.mark.cli
def test_two_concurrent_ups_end_with_one_daemon(daemon):
    env = {**os.environ, "LLMOS_HOME": str(daemon.home), "NO_COLOR": "1"}
    procs = [subprocess.Popen([LLMOS, "up", "--no-preload", "--port", str(free_port())], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[1] for p in procs]
    info = daemon.remember()
    assert all(p.returncode == 0 for p in procs), outputs
    assert all(f"(pid {info['pid']}," in o for o in outputs), outputs
    assert sum("llmos is up" in o for o in outputs) == 1
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert sum(1 for line in ps.splitlines() if f"--home {daemon.home} serve --socket" in line) == 1


@pytest.mark.cli
def test_version_mismatch_logs_and_sigterm(daemon):
    info = daemon.up("--no-preload")
    health = d.probe(daemon.home)
    assert health["version"] == info["version"]
    with pytest.raises(VersionMismatchError, match=rf"runs llmos {info['version']} but this client is llmos 9\.9"):
        d.probe(daemon.home, client_version="9.9.9")
    os.kill(info["pid"], signal.SIGTERM)  # SIGTERM stops it like `llmos down`
    wait_for(lambda: _gone(info["pid"]), timeout=20)
    assert d.daemon_address(daemon.home).state == "down" and not d.socket_path(daemon.home).exists()
    result = daemon.llmos("logs", "-n", "3")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3 and "Finished server process" in lines[-1], result.stdout
    started = daemon.llmos("logs", "-n", "1000").stdout
    assert f"(pid {info['pid']}) listening on {info['tcp']} and {d.socket_path(daemon.home)}" in started


@pytest.mark.cli
def test_up_failure_points_to_the_log(daemon):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        result = daemon.llmos("up", "--no-preload", "--port", str(port), "--timeout", "60")
    finally:
        busy.close()
    assert result.returncode == 1 and "did not come up" in result.stderr
    assert "it exited with status 3 before answering" in result.stderr  # uvicorn's startup failure
    assert "address already in use" in result.stderr.lower()  # the log's tail says why
    assert str(d.log_dir(daemon.home) / "stderr.log") in result.stderr
    assert d.daemon_address(daemon.home).state == "down"
    with open(d.lock_path(daemon.home)) as fh:  # and the lock is free again
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.cli
def test_logs_follow_a_log_that_appears_later_from_its_first_line(daemon):
    log = d.log_dir(daemon.home) / "llmos.log"
    env = {**os.environ, "LLMOS_HOME": str(daemon.home)}
    proc = subprocess.Popen([LLMOS, "logs", "-f"], env=env, stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        time.sleep(1.0)  # it is waiting for the file
        log.parent.mkdir(parents=True)
        log.write_text("the daemon's first line\n")
        wait_for(lambda: seen == ["the daemon's first line\n"], timeout=10, msg=lambda: seen)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.cli
def test_logs_follow_across_a_rotation(daemon):
    log = d.log_dir(daemon.home) / "llmos.log"
    log.parent.mkdir(parents=True)
    log.write_text("old 1\nold 2\n")
    env = {**os.environ, "LLMOS_HOME": str(daemon.home)}
    proc = subprocess.Popen([LLMOS, "logs", "-n", "1", "-f"], env=env, stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: seen == ["old 2\n"], timeout=30, msg=lambda: seen)
        with open(log, "a") as fh:
            fh.write("before rotation\n")
        time.sleep(0.5)
        with open(log, "a") as fh:  # the last line the old file gets, just before it is renamed
            fh.write("last of the old file\n")
        log.rename(log.with_name("llmos.log.1"))  # what RotatingFileHandler does
        log.write_text("after rotation\n")
        wait_for(lambda: seen[-1:] == ["after rotation\n"], timeout=10, msg=lambda: seen)
        assert seen == ["old 2\n", "before rotation\n", "last of the old file\n", "after rotation\n"]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.cli
def test_idle_exit_and_bad_durations(daemon):
    bad = daemon.llmos("up", "--idle-exit", "soon")
    assert bad.returncode == 2 and "--idle-exit: expected seconds or a duration like" in bad.stderr
    assert d.daemon_address(daemon.home).state == "down"
    daemon.home.mkdir()
    (daemon.home / "llmos.toml").write_text('[kernel]\nkeep_alive = "a while"\n')
    conf = daemon.llmos("up", "--port", str(free_port()), "--timeout", "60", env={"LLMOS_KEEP_ALIVE": ""})
    assert conf.returncode == 1 and "keep_alive: expected seconds" in conf.stderr  # the log's tail says why
    (daemon.home / "llmos.toml").unlink()
    started = time.monotonic()
    info = daemon.up("--no-preload", "--idle-exit", "1s")
    wait_for(lambda: _gone(info["pid"]), timeout=30)
    assert 1 <= time.monotonic() - started < 30
    assert d.daemon_address(daemon.home).state == "down" and not d.socket_path(daemon.home).exists()
    assert "no model loaded, no client): exiting" in daemon.llmos("logs").stdout
