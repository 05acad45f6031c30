"""Faults: a driver raising mid-batch, a plugin hook raising, an MCP server exiting, the disk filling.
Each is reported clearly and nothing else breaks. (kill -9 during memfs and fine-tune writes:
test_memfs.py and test_finetune.py; a remote node dying mid-stream: test_remote.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import llmos
from llmos.kernel.errors import RequestFailedError
from llmos.kernel.sched.request import RequestStatus
from llmos.plugins.hookspecs import hookimpl
from llmos.plugins.manager import PluginManager

from .fakes import FakeDriver
from .test_plugins import MCP_SERVER, mcp_home
from .util import wait_for


class FlakyDriver(FakeDriver):
    """Raises in the step where `fail_at_step` sequences are running together (a mid-batch fault)."""

    name = "flaky"
    fail_when_running = 0
    loads = 0
    gate = threading.Event()  # cleared: steps wait, so requests submitted meanwhile join one batch

    def execute(self, batch):
        type(self).gate.wait(10)
        if type(self).fail_when_running and len(batch.num_scheduled_tokens) >= type(self).fail_when_running:
            type(self).fail_when_running = 0
            raise RuntimeError("injected fault mid-batch")
        return super().execute(batch)


class SteadyDriver(FakeDriver):
    name = "steady"


class RaisingPlugin:
    @hookimpl
    def register_drivers(self, register):
        register(FlakyDriver)
        register(SteadyDriver)

    @hookimpl
    def request_finished(self, request):
        raise ValueError("observer bug")

    @hookimpl
    def prepare_prompt(self, prompt):
        raise KeyError("rewriter bug")


@pytest.fixture
def kernel(tmp_path):
    pm = PluginManager(load_entrypoints=False)
    pm.register(RaisingPlugin(), name="raising")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    FlakyDriver.loads = 0
    FlakyDriver.gate.set()
    k = llmos.boot(home=tmp_path / "home", plugins=pm, default_model=str(model), max_running=4)
    yield k
    k.shutdown()


def test_a_driver_fault_mid_batch_fails_that_batch_only(kernel):
    FlakyDriver.fail_when_running = 3
    kernel.load(driver="flaky")
    FlakyDriver.gate.clear()
    steady = [kernel.submit("steady work", driver="steady", max_tokens=40) for _ in range(3)]
    flaky = [kernel.submit(f"batch {i}", driver="flaky", max_tokens=40) for i in range(3)]
    FlakyDriver.gate.set()
    for h in flaky:
        with pytest.raises(RequestFailedError, match="injected fault mid-batch"):
            h.result(10)
        assert h.status == RequestStatus.FINISHED_FAILED
    assert all(h.result(10).status == RequestStatus.FINISHED_LENGTH for h in steady)  # the other driver
    assert FlakyDriver.loads == 2  # reloaded ...
    assert kernel.generate("after", driver="flaky", max_tokens=5).text  # ... and serving again
    [engine] = [e for e in kernel.engines() if e["driver"] == "flaky"]
    assert engine["failures"] == 1


def test_raising_plugin_hooks_are_reported_and_requests_go_on(kernel):
    c = kernel.generate("hello", driver="steady", max_tokens=4)
    assert c.status == RequestStatus.FINISHED_LENGTH
    wait_for(lambda: len(kernel.plugins.failures) >= 2)
    errors = " ".join(f.error for f in kernel.plugins.failures)
    assert "rewriter bug" in errors and "observer bug" in errors
    assert {f.name for f in kernel.plugins.failures} == {"raising"}


@pytest.mark.cli
def test_an_mcp_server_that_exits_is_reported_and_restarted(tmp_path):
    home = mcp_home(tmp_path, MCP_SERVER.replace('if __name__ == "__main__":', textwrap.dedent('''
        @server.tool()
        def crash() -> int:
            """Exit the server process."""
            import os
            os._exit(3)


        if __name__ == "__main__":''')))
    with llmos.boot(home=home, load_entrypoints=False) as k:
        assert k.call_tool("adder.add", {"a": 1, "b": 2}).ok
        crashed = k.call_tool("adder.crash", {}, timeout=20)
        assert not crashed.ok and crashed.error
        assert k.call_tool("calculator", {"expression": "2+2"}).value == 4  # the rest keeps working
        assert "adder" in k.tools.mcp.errors and "adder.add" not in k.tools.all()
        time.sleep(1.2)  # the restart pause
        again = k.call_tool("adder.add", {"a": 40, "b": 2}, timeout=30)
        assert again.ok and str(again.value).strip("{}").endswith("42"), again  # started again on demand


DISK_FULL = '''
import json, resource, signal, sys
from pathlib import Path
import llmos
from llmos.kernel.errors import StorageError
home = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails with EFBIG instead
with llmos.boot(home=home, load_entrypoints=False) as k:
    k.mem.write("/keep/a.md", "The owl hunts at night.")
    # just above memfs's largest file (not the home's: the embedder's ONNX export lives there too)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max(f.stat().st_size for f in (home / "memfs").rglob("*")
                                                   if f.is_file()) + 4096, resource.RLIM_INFINITY))
    out = {}
    try:
        k.mem.write("/big/b.md", "word " * 20000)
        out["error"] = None
    except StorageError as exc:
        out["error"] = str(exc)
    out["kept"] = k.mem.cat("/keep/a.md")
    print(json.dumps(out))
'''


@pytest.mark.model
def test_a_full_disk_during_a_memfs_write_is_a_clear_error_and_loses_nothing(tmp_path):
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-c", DISK_FULL, str(home)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] and "disk full" in out["error"] and "nothing was changed" in out["error"]
    assert out["kept"] == "The owl hunts at night."
    with llmos.boot(home=home, load_entrypoints=False) as k:  # after the disk has room again
        assert k.mem.cat("/keep/a.md") == "The owl hunts at night."
        assert [e["path"] for e in k.mem.ls("/", True) if e["type"] == "file"] == ["/keep/a.md"]
        k.mem.write("/big/b.md", "Now it fits.")
        assert k.mem.find("owl")[0]["path"] == "/keep/a.md"
