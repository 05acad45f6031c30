"""torch driver benchmarks (torch-driver issue): B1a."""

from __future__ import annotations

import time

from . import BenchContext, BenchResult, benchmark
from .llamacpp_bench import PROMPTS, _kernel

OUTPUT_LENGTHS = [16, 24, 32, 48, 64, 40, 20, 56] * 2


@benchmark("B1a", "16 concurrent requests (mixed lengths) via the torch driver vs one at a time via model.generate")
def b1a(ctx: BenchContext) -> BenchResult:
    import torch

    with _kernel(ctx, max_running=16) as kernel:
        loaded = kernel.load("smollm2", driver="torch")
        model, tok = loaded.driver.model, loaded.driver.tokenizer
        kernel.generate("warm up", max_tokens=4, driver="torch")
        ctx.log("B1a: 16 concurrent requests through the torch driver")
        started = time.perf_counter()
        handles = [kernel.submit(p, max_tokens=n, ignore_eos=True, driver="torch")
                   for p, n in zip(PROMPTS, OUTPUT_LENGTHS)]
        total = sum(len(h.result().token_ids) for h in handles)
        candidate = total / (time.perf_counter() - started)
        ctx.log("B1a: the same requests one at a time through model.generate")
        started = time.perf_counter()
        total = 0
        with torch.inference_mode():
            for p, n in zip(PROMPTS, OUTPUT_LENGTHS):
                ids = tok(p, return_tensors="pt").input_ids.to(model.device)
                out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                total += out.shape[1] - ids.shape[1]
        baseline = total / (time.perf_counter() - started)
    return BenchResult("B1a", baseline, candidate, "tokens/s", 4.0,
                       description="aggregate tokens/s, 16 requests, 16-64 new tokens each")
