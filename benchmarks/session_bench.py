"""Chat-session benchmark (the warm-sessions issue): real `llmos` daemons on a scratch LLMOS_HOME.

B13: a chat session's first turn has a ~2,000-token context; the daemon is stopped and started again (a new
process: nothing of the session is in RAM), the model is loaded by an unrelated request, and the session's
next turn is sent: its time to first token (streamed over the Unix socket, client side) when it is a turn
of the session (its saved KV restored from $LLMOS_HOME/kv/) vs the same messages sent without the session
(the whole context recomputed). Same daemon settings, threads and messages in both arms, each after its own
restart.
"""

from __future__ import annotations

import json
import time

from .daemon_bench import _Home
from .registry import BenchContext, BenchResult, benchmark

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
LOG = "The harbour log records ships, tides, cargo and weather for every day of the season. " * 108
FIRST = [SYSTEM, {"role": "user", "content": LOG + "Which ships came in?"}]
NEXT = {"role": "user", "content": "And what was the weather like?"}


def _turn(uds, messages: list[dict], session: str | None, max_tokens: int) -> tuple[float, str, dict]:
    """(seconds to the first streamed token, the answer, the final chunk: usage, llmos) of one chat turn."""
    body = {"model": "smollm2", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if session is not None:
        body["session"] = session
    start, first, text, last = time.perf_counter(), None, "", {}
    with uds.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise RuntimeError(f"B13: the turn failed: {chunk['error']}")
            content = chunk["choices"][0]["delta"].get("content")
            if content:
                first = time.perf_counter() - start if first is None else first
                text += content
            if "usage" in chunk:
                last = chunk
    return first, text, last


def _restarted(home: _Home):
    from llmos.shell import daemon as d

    home.down()
    home.up()  # a fresh process, its model loaded by an unrelated request
    return d.uds_client(d.socket_path(home.path), timeout=600)


@benchmark("B13", "next turn of a 2,000-token chat session after a daemon restart: TTFT saved KV vs re-prefill")
def b13(ctx: BenchContext) -> BenchResult:
    from llmos.shell import daemon as d

    home = _Home()
    try:
        home.up()
        with d.uds_client(d.socket_path(home.path), timeout=600) as uds:
            session = uds.post("/llmos/sessions", json={"name": "b13"}).json()["id"]
            _ttft, answer, first = _turn(uds, FIRST, session, 16)
        second = FIRST + [{"role": "assistant", "content": answer}, NEXT]
        with _restarted(home) as uds:
            warm, _text, warm_end = _turn(uds, second, session, 8)
        with _restarted(home) as uds:
            cold, _text, cold_end = _turn(uds, second, None, 8)
        kv_bytes = sum(f.stat().st_size for f in (home.path / "kv").glob("*.kv"))
    finally:
        home.close()
    cached = warm_end["llmos"]["metrics"]["cached_prompt_tokens"]
    prompt = warm_end["usage"]["prompt_tokens"]
    ctx.log(f"B13: context {first['usage']['prompt_tokens']} + {first['usage']['completion_tokens']} tokens, next turn "
            f"{prompt} tokens: warm restored {cached} and computed {prompt - cached} (cold: "
            f"{cold_end['llmos']['metrics']['cached_prompt_tokens']} restored); TTFT warm {warm * 1000:.0f} ms, cold "
            f"{cold * 1000:.0f} ms; saved KV {kv_bytes / 2**20:.1f} MiB")
    if cached == 0:
        raise RuntimeError("B13: the warm turn restored nothing: the session's KV was not saved or not used")
    return BenchResult("B13 TTFT of a 2,000-token session's next turn after a restart, re-prefill vs saved KV",
                       cold * 1000, warm * 1000, "ms", 5.0, higher_is_better=False,
                       description=f"{cached} of {prompt} prompt tokens restored; each arm after its own restart")
