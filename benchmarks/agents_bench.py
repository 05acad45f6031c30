"""Agent benchmark (agents issue): B7, the AIOS paper's headline setting.

8 agents, each making 4 LLM calls with a simulated tool wait of 50-200 ms after each. Candidate: the
agents' calls go through the kernel (the path `kernel.spawn` agents take), so the scheduler batches the
calls of agents that are thinking while others wait on tools. Baseline: the same agents as threads
sharing one plain `llama_cpp.Llama` behind a lock, the usual way to share a local model. Both sides
generate the same tokens (greedy, fixed lengths) and sleep the same seeded waits.
"""

from __future__ import annotations

import random
import threading
import time

from .registry import BenchContext, BenchResult, benchmark
from .llamacpp_bench import PROMPTS, _kernel, _plain, _plain_generate, _plain_llama

AGENTS, CALLS, TOKENS = 8, 4, 48


def _waits() -> list[list[float]]:
    rng = random.Random(7)
    return [[rng.uniform(0.05, 0.2) for _ in range(CALLS)] for _ in range(AGENTS)]


def _run_agents(think) -> float:
    """Seconds until all agents finish; `think(agent, call)` is one blocking LLM call."""
    waits = _waits()

    def agent(i: int) -> None:
        for j in range(CALLS):
            think(i, j)
            time.sleep(waits[i][j])  # the tool

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(AGENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def _prompt(i: int, j: int) -> str:
    return f"{PROMPTS[i]} (step {j + 1})"


@benchmark("B7", "8 agents x 4 LLM calls with 50-200 ms tool waits: through the kernel vs one model behind a lock")
def b7(ctx: BenchContext) -> BenchResult:
    with _kernel(ctx, max_running=AGENTS) as kernel:
        loaded = kernel.load("smollm2")
        kernel.generate("warm up", max_tokens=4)
        ctx.log("B7: agents through the kernel")
        candidate = _run_agents(lambda i, j: kernel.generate(_prompt(i, j), max_tokens=TOKENS, ignore_eos=True,
                                                             owner=f"agent{i}", temperature=0))  # greedy, as plain
    ctx.log("B7: agents sharing plain Llama behind a lock")
    llm = _plain_llama(loaded)
    _plain_generate(llm, "warm up", 4)
    lock = threading.Lock()

    def locked(i: int, j: int) -> None:
        with lock:
            _plain_generate(llm, _prompt(i, j), TOKENS)

    baseline = _run_agents(locked)
    _plain(llm.close)
    return BenchResult("B7", baseline, candidate, "s to finish all", 2.1, higher_is_better=False,
                       description=f"{AGENTS} agents x {CALLS} calls x {TOKENS} tokens, tool waits 50-200 ms")
