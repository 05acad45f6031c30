"""Issue 14, tools: the calculator refuses what would freeze the process, whatever a tool raises or
returns is a typed tool error (in the kernel, the agent loop and the CLI), and calls that time out
leave a bounded number of worker threads behind."""

from __future__ import annotations

import json
import threading

import pytest

import llmos
from llmos.kernel.proc.agents import ProcessState
from llmos.kernel.tools.tools import MAX_ABANDONED, MAX_RESULT_CHARS
from llmos.plugins.hookspecs import hookimpl
from llmos.plugins.manager import PluginManager

from .fakes import ScriptedDriver
from .test_agents import answer, call, script
from .util import run_llmos, wait_for

RELEASE = threading.Event()


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def _cycle() -> list:
    loop: list = []
    loop.append(loop)
    return loop


#: results no JSON client can take: each must come back as a tool error
BAD_RESULTS = {
    "huge_int": lambda: 10**5000,
    "cycle": _cycle,
    "nan": lambda: float("nan"),
    "unprintable": _Unprintable,
    "too_long": lambda: "x" * (MAX_RESULT_CHARS + 1),
}


class ToolsPlugin:
    @hookimpl
    def register_drivers(self, register):
        register(ScriptedDriver)

    @hookimpl
    def register_tools(self, register):
        def returns(kind: str) -> str:
            """Return a value that is not JSON (see BAD_RESULTS)."""
            return BAD_RESULTS[kind]()

        def exits() -> str:
            """Raise SystemExit, which is not an Exception."""
            raise SystemExit(3)

        def block() -> str:
            """Block until the test releases it."""
            RELEASE.wait(60)
            return "released"

        register(returns)
        register(exits)
        register(block)


@pytest.fixture
def kernel(tmp_path):
    ScriptedDriver.prompts, ScriptedDriver.schemas, ScriptedDriver.delay = [], [], 0.0
    RELEASE.clear()
    pm = PluginManager(load_entrypoints=False)
    pm.register(ToolsPlugin(), name="tools-test")
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    k = llmos.boot(home=tmp_path / "home", plugins=pm, default_model=str(model))
    yield k
    RELEASE.set()
    k.shutdown()


# -- the calculator -------------------------------------------------------------------------------

REFUSED = {
    "4000000**4000000": "would have about 87,726,274 bits",  # 27 s of a frozen process before
    "10**5000": "would have about 16,610 bits",              # a traceback from json.dumps before
    "9**9**9": "would have about 1,228,093,894 bits",
    "999999**999999": "bits; the limit is 10,000 bits",
    "(2**9999)*(2**9999)": "an intermediate result has 19,999 bits",
    "'a'*10**9": "a str literal is not allowed",
    "[1]*10**9": "List is not allowed",
    "[x for x in [1]*10**6]": "is not allowed",
    "round(5, -10**9)": "ndigits -1000000000 is out of range",
    "(1).real": "Attribute is not allowed",
    "1e308*10": "is not a finite number",
    "1" * 2000: "the limit is 1,000",
}


@pytest.mark.parametrize("expression", list(REFUSED), ids=lambda e: e[:24])
def test_calculator_refuses_huge_numbers_and_sequences_before_computing(kernel, expression):
    result = kernel.call_tool("calculator", {"expression": expression})
    assert not result.ok and result.code == "tool_failed", result
    assert result.error.startswith("CalculatorError: ") and REFUSED[expression] in result.error, result.error


def test_calculator_still_computes_within_its_limits(kernel):
    values = {e: kernel.call_tool("calculator", {"expression": e}).value
              for e in ("2**10 - 24", "sqrt(16) + 1", "2**9999 // 2**9998", "3 if 2 > 1 else 4", "round(2.567, 2)")}
    assert values == {"2**10 - 24": 1000, "sqrt(16) + 1": 5.0, "2**9999 // 2**9998": 2, "3 if 2 > 1 else 4": 3,
                      "round(2.567, 2)": 2.57}
    assert kernel.call_tool("calculator", {"expression": "2**9999"}).value.bit_length() == 10_000


# -- any tool -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(BAD_RESULTS))
def test_a_result_that_is_not_json_is_a_typed_tool_error_and_audited(kernel, kind):
    result = kernel.call_tool("returns", {"kind": kind})
    assert not result.ok and result.code == "tool_failed" and result.value is None, result
    json.dumps(result.as_dict())  # what the CLI prints
    last = json.loads((kernel.config.home / "audit.jsonl").read_text().splitlines()[-1])
    assert (last["tool"], last["outcome"], last["code"]) == ("returns", "error", "tool_failed")


def test_a_tool_raising_systemexit_is_a_tool_error_not_an_exit(kernel):
    result = kernel.call_tool("exits", {})
    assert not result.ok and result.code == "tool_failed" and result.error == "SystemExit: 3"


@pytest.mark.parametrize("tool, args", [("returns", {"kind": "huge_int"}), ("exits", {})])
def test_an_agent_reads_any_tool_failure_and_goes_on(kernel, tool, args):
    """Before: the agent's tool thread died on json.dumps / SystemExit and the process hung."""
    script(*call(tool, **args), *answer("It failed."))
    proc = kernel.spawn("Use the tool.", tools=[tool])
    assert proc.wait(30), "the agent hung on a failing tool"
    assert proc.state == ProcessState.FINISHED and proc.answer == "It failed."
    result = next(e for e in proc.events() if e.kind == "tool_result")
    assert result.text.startswith("error: ") and result.data == {"name": tool, "ok": False, "code": "tool_failed"}
    stored = [m for m in kernel.sessions.get(proc.session_id).messages if m["role"] == "tool"]
    assert stored[0]["content"] == result.text


def test_timed_out_calls_leave_at_most_max_abandoned_daemon_workers_per_tool(kernel):
    """Policy: a timed-out call's thread cannot be killed; it is left as a daemon and counted. At
    MAX_ABANDONED such threads per tool, calls to that tool are refused (tool_busy) until one ends."""
    for _ in range(MAX_ABANDONED):
        timed_out = kernel.tools.call("block", {}, timeout=0.05)
        assert (timed_out.ok, timed_out.code, timed_out.error) == (False, "tool_timeout", "timed out after 0.05s")
    workers = [t for t in threading.enumerate() if t.name == "llmos-tool-block"]
    assert len(workers) == MAX_ABANDONED and all(t.daemon for t in workers)
    busy = kernel.tools.call("block", {}, timeout=0.05)
    assert (busy.ok, busy.code) == (False, "tool_busy") and f"{MAX_ABANDONED} earlier calls" in busy.error
    assert len([t for t in threading.enumerate() if t.name == "llmos-tool-block"]) == MAX_ABANDONED  # none started
    assert kernel.call_tool("calculator", {"expression": "6*7"}).value == 42  # other tools are not affected
    RELEASE.set()
    wait_for(lambda: kernel.tools.workers.abandoned("block") == 0, timeout=30)
    assert kernel.tools.call("block", {}).value == "released"


# -- the CLI (a freeze fails the subprocess timeout) ---------------------------------------------

@pytest.mark.cli
@pytest.mark.parametrize("expression", ["4000000**4000000", "10**5000", "9**9**9", "'a'*10**9"])
def test_cli_tools_call_calculator_refuses_at_once_with_a_typed_error(tmp_path, expression):
    r = run_llmos("tools", "call", "calculator", "--args", json.dumps({"expression": expression}), timeout=20,
                  env={"LLMOS_HOME": str(tmp_path)})
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["code"] == "tool_failed" and out["error"].startswith("CalculatorError: ")
