"""Constrained decoding on the torch driver (grammar issue): B14.

20 tool calls as the HTTP server asks for them under `tool_choice: "required"` (the tools described in a
system message, the reply constrained to `call_schema`), through the torch driver, all 20 submitted
together. The tools' parameter schemas are `bounded` as the agents bound them (strings up to 80
characters): an unbounded string lets a 135M model write until max_tokens. Same kernel, prompts, greedy
decoding, device and threads in every pass; both modes warmed up first (llguidance builds its tokenizer
once per model, ~0.4 s).

Results: how many constrained calls parse and fit their tool's schema (must be all); the time for the
20 calls constrained vs the same 20 unconstrained with each request generating exactly as many tokens
as its constrained one (the same batches step by step: what the masks cost), passes in the order
constrained, unconstrained, unconstrained, constrained so a machine getting busier or quieter weighs on
both alike; and, for reference, vs the 20 unconstrained as long as the model writes them (which it
does at much greater length, so that ratio flatters).
"""

from __future__ import annotations

import time

from llmos.kernel.proc.tool_calling import (Function, InvalidToolCall, bounded, call_schema, check_call, parse_reply,
                                            tools_prompt)

from .llamacpp_bench import _kernel
from .registry import BenchContext, BenchResult, benchmark

TOOLS = ["calculator", "now", "mem_find", "mem_cat", "mem_write"]
PROMPTS = [
    "What is 17 * 23?", "Compute the square root of 2.", "What time is it?", "How much is 1234 + 4321?",
    "Find my notes about owls.", "What is today's date in UTC?", "Search memory for the meeting agenda.",
    "What is 2 to the power of 10?", "Read the file /notes/todo.md.", "Save 'buy milk' to /notes/shopping.md.",
    "Divide 100 by 7.", "Which notes mention Paris?", "What's the cosine of 0?", "Show me /docs/readme.md.",
    "Remember that the meeting moved to Friday.", "Is it morning or evening now?", "What is 3.5 times 4?",
    "Look up what I wrote about the budget.", "Write a note called /ideas/app.md about a todo app.",
    "Calculate 15% of 240.",
]
MAX_TOKENS = 256  # room for mem_write's two 80-character strings


def _valid(text: str, functions: list[Function]) -> bool:
    try:
        _content, calls = parse_reply(text)
        for call in calls or []:
            check_call(call, functions)
        return bool(calls)
    except InvalidToolCall:
        return False


def _calls(kernel, functions: list[Function], schema: dict | None,
           lengths: list[int] | None = None) -> tuple[float, list[int], int]:
    """(seconds for all 20, tokens each generated, replies that are valid calls). `lengths`: generate
    exactly that many tokens per request (EOS ignored) instead of up to MAX_TOKENS."""
    extra = {"json_schema": schema} if schema is not None else {}
    system = {"role": "system", "content": tools_prompt(functions, may_answer=False)}
    limits = [{"max_tokens": n, "ignore_eos": True} for n in lengths] if lengths else [{"max_tokens": MAX_TOKENS}] * len(PROMPTS)
    started = time.perf_counter()
    handles = [kernel.submit(messages=[system, {"role": "user", "content": p}], driver="torch", temperature=0,
                             **limit, **extra) for p, limit in zip(PROMPTS, limits)]
    done = [h.result(600) for h in handles]
    elapsed = time.perf_counter() - started
    return elapsed, [len(c.token_ids) for c in done], sum(_valid(c.text, functions) for c in done)


@benchmark("B14", "20 tool calls on the torch driver, schema-constrained vs unconstrained: validity and time")
def b14(ctx: BenchContext) -> list[BenchResult]:
    with _kernel(ctx, max_running=len(PROMPTS)) as kernel:
        kernel.load("smollm2", driver="torch")
        tools = kernel.tools.all()
        functions = [Function(n, tools[n].description, bounded(tools[n].schema)) for n in TOOLS]
        schema = call_schema(functions, may_answer=False)
        for warm in (schema, None):
            kernel.chat([{"role": "user", "content": "Hi"}], driver="torch", max_tokens=4, json_schema=warm)
        ctx.log("B14: 20 tool calls, constrained")
        shaped = [_calls(kernel, functions, schema)]
        lengths = shaped[0][1]
        ctx.log("B14: the same 20 calls unconstrained, each generating as many tokens as its constrained one (twice)")
        same = [_calls(kernel, functions, None, lengths) for _ in range(2)]
        ctx.log("B14: 20 tool calls, constrained, again")
        shaped.append(_calls(kernel, functions, schema))
        ctx.log("B14: 20 tool calls unconstrained, as long as the model writes (up to max_tokens)")
        free_s, free_lengths, free_valid = _calls(kernel, functions, None)
    n = len(PROMPTS)
    shaped_s, same_s = sum(r[0] for r in shaped) / 2, sum(r[0] for r in same) / 2
    return [
        BenchResult("B14 constrained tool calls that parse and fit the schema", n, min(r[2] for r in shaped), "calls",
                    1.0, description=f"of {n} (the fewer of both constrained passes); unconstrained: {free_valid}/{n}"),
        BenchResult("B14 time for 20 tool calls, unconstrained vs constrained, same output lengths", same_s, shaped_s,
                    "s", 1 / 1.5, higher_is_better=False,
                    description=f"constrained/unconstrained {shaped_s / same_s:.2f}x (target <= 1.5x), mean of 2 passes "
                                f"each in the order C U U C; {sum(lengths)} tokens in each pass: the masks' cost"),
        BenchResult("B14 time for 20 tool calls, unconstrained vs constrained, as long as each writes", free_s, shaped_s,
                    "s", 1 / 1.5, higher_is_better=False,
                    description=f"constrained/unconstrained {shaped_s / free_s:.2f}x; {sum(lengths)} tokens constrained, "
                                f"{sum(free_lengths)} unconstrained (0-{MAX_TOKENS} each)"),
    ]
