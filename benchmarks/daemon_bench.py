"""Resident-kernel benchmarks (the resident-kernel issue): real `llmos` processes on a scratch LLMOS_HOME.

B9: wall time of `llmos run -n 16` from process start to exit (16 tokens printed), attached to a warm
resident kernel vs `--local` (boot, load, answer in process); runs interleaved, medians.

B9b: four clients at once (two loops of `llmos run`, an agent, a `llmos.connect()` program) on one
resident kernel vs the same four each with an in-process kernel: aggregate completion tokens/s over
the wall time of the whole set, and the sum of the processes' peak RSS (each client's, plus the
daemon's when attached).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .registry import BenchContext, BenchResult, benchmark

LLMOS = str(Path(sys.executable).with_name("llmos"))
ASK = "Count from 1 to 200, separated by commas."
RUNS = 5
LOOP_RUNS = 3
LOOP_TOKENS = 64
PROGRAM = """
import json, sys, llmos
k = llmos.connect() if sys.argv[1] == "attached" else llmos.boot(load_entrypoints=False)
n = sum(k.generate({ask!r}, max_tokens={tokens}, temperature=0, ignore_eos=True).usage["completion_tokens"]
        for _ in range({runs}))
k.shutdown()
print(json.dumps({{"tokens": n}}))
"""


class _Home:
    """A scratch LLMOS_HOME and the `llmos` commands run against it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="llmos-bench-b9-"))
        self.env = {**os.environ, "LLMOS_HOME": str(self.path)}

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)

    def up(self) -> int:
        subprocess.run([LLMOS, "up", "--port", "0"], env=self.env, check=True, capture_output=True, timeout=180)
        subprocess.run([LLMOS, "run", "-n", "4", "Hi"], env=self.env, check=True, capture_output=True, timeout=180)
        return json.loads(subprocess.run([LLMOS, "status", "--json"], env=self.env, capture_output=True, text=True,
                                         check=True).stdout)["pid"]

    def down(self) -> None:
        subprocess.run([LLMOS, "down"], env=self.env, capture_output=True, timeout=120)

    def close(self) -> None:
        self.down()
        shutil.rmtree(self.path, ignore_errors=True)


def _wait(proc: subprocess.Popen, ok: tuple[int, ...] = (0,)) -> tuple[str, int]:
    """stdout and peak RSS (bytes) of a finished child."""
    out = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in ok:
        raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
    return out, usage.ru_maxrss * 1024


def _timed_run(home: _Home, local: bool) -> float:
    start = time.perf_counter()
    _wait(home.start(LLMOS, "run", *(["--local"] if local else []), "-n", "16", "-t", "0", ASK))
    return time.perf_counter() - start


@benchmark("B9", "llmos run (process start to 16 tokens printed): attached to a warm resident kernel vs --local")
def b9(ctx: BenchContext) -> BenchResult:
    home = _Home()
    try:
        home.up()
        local, attached = [], []
        for i in range(RUNS):  # interleaved: drift on the machine hits both
            local.append(_timed_run(home, local=True))
            attached.append(_timed_run(home, local=False))
            ctx.log(f"B9 run {i + 1}/{RUNS}: local {local[-1]:.2f}s, attached {attached[-1]:.2f}s")
    finally:
        home.close()
    return BenchResult("B9 llmos run attached vs local", statistics.median(local), statistics.median(attached),
                       "s", 5.0, higher_is_better=False,
                       description=f"median of {RUNS} interleaved runs; --local boots, loads and answers")


def _clients(home: _Home, mode: str) -> list[subprocess.Popen]:
    local = ["--local"] if mode == "local" else []
    loop = [sys.executable, "-c", "import subprocess, sys\n"
            f"for _ in range({LOOP_RUNS}):\n"
            f"    subprocess.run([{LLMOS!r}, 'run', *{local!r}, '--json', '-n', '{LOOP_TOKENS}', '-t', '0', {ASK!r}],"
            " check=True)"]
    agent = [LLMOS, "agent", "run", *local, "--json", "--tools", "calculator", "--max-steps", "1",
             "--max-tokens", str(LOOP_TOKENS * LOOP_RUNS), ASK]
    program = [sys.executable, "-c", PROGRAM.format(ask=ASK, tokens=LOOP_TOKENS, runs=LOOP_RUNS), mode]
    return [home.start(*cmd) for cmd in (loop, loop, agent, program)]


def _tokens(out: str) -> int:
    """Completion tokens in a client's JSON lines (`llmos run --json`, agent events, the program's)."""
    total = 0
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            total += (row.get("usage") or {}).get("completion_tokens", 0) + row.get("tokens", 0)
    return total


def _four(home: _Home, mode: str, daemon_pid: int | None) -> tuple[float, int]:
    """(aggregate tokens/s, peak RSS sum) of the four clients run at once."""
    start = time.perf_counter()
    results = [_wait(p, ok=(0, 1)) for p in _clients(home, mode)]  # an agent out of budget exits 1
    wall = time.perf_counter() - start
    rss = sum(r for _out, r in results)
    if daemon_pid is not None:
        status = Path(f"/proc/{daemon_pid}/status").read_text()
        rss += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    return sum(_tokens(out) for out, _r in results) / wall, rss


@benchmark("B9b", "four clients (two run loops, an agent, a connect() program): one resident kernel vs four in-process")
def b9b(ctx: BenchContext) -> list[BenchResult]:
    home = _Home()
    try:
        local_tps, local_rss = _four(home, "local", None)
        ctx.log(f"B9b local: {local_tps:.1f} tok/s, peak RSS sum {local_rss / 2**20:.0f} MiB")
        pid = home.up()
        attached_tps, attached_rss = _four(home, "attached", pid)
        ctx.log(f"B9b attached: {attached_tps:.1f} tok/s, peak RSS sum {attached_rss / 2**20:.0f} MiB")
    finally:
        home.close()
    return [BenchResult("B9b aggregate tokens/s, 4 clients", local_tps, attached_tps, "tok/s", 2.0,
                        description="one resident kernel batches the four; in-process kernels share the cores"),
            BenchResult("B9b peak RSS sum, 4 clients", local_rss / 2**20, attached_rss / 2**20, "MiB", 2.0,
                        higher_is_better=False, description="each client's peak plus the daemon's (VmHWM)")]
