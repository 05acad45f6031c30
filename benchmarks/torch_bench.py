"""torch driver benchmarks (torch-driver issue): B1a, B2, B2b; B3t (parity issue)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from llmos.kernel.config import Config
from llmos.kernel.lib.threads import in_passing_thread

from .registry import BenchContext, BenchResult, benchmark
from .llamacpp_bench import PROMPTS, _kernel, shared_prefix_ttft

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
        handles = [kernel.submit(p, max_tokens=n, ignore_eos=True, driver="torch", temperature=0)  # as generate
                   for p, n in zip(PROMPTS, OUTPUT_LENGTHS)]
        total = sum(len(h.result().token_ids) for h in handles)
        candidate = total / (time.perf_counter() - started)
        ctx.log("B1a: the same requests one at a time through model.generate")

        def one_at_a_time() -> float:
            started, total = time.perf_counter(), 0
            with torch.inference_mode():
                for p, n in zip(PROMPTS, OUTPUT_LENGTHS):
                    ids = tok(p, return_tensors="pt").input_ids.to(model.device)
                    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                    total += out.shape[1] - ids.shape[1]
            return total / (time.perf_counter() - started)

        baseline = in_passing_thread(one_at_a_time)  # its OpenMP team ends with it (kernel/lib/threads.py)
    return BenchResult("B1a", baseline, candidate, "tokens/s", 4.0,
                       description="aggregate tokens/s, 16 requests, 16-64 new tokens each")


N_ADAPTERS = 8


@contextlib.contextmanager
def _kernel_with_adapters(ctx: BenchContext, n: int):
    """A kernel on a scratch home (sharing the real dequantization cache) with `n` LoRA modules."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import llmos

    real = Config.load(ctx.home).home
    with tempfile.TemporaryDirectory(prefix="llmos-bench-") as tmp:
        (real / "cache").mkdir(parents=True, exist_ok=True)
        os.symlink(real / "cache", Path(tmp) / "cache")
        if (real / "llmos.toml").exists():  # the models it names (e.g. where smollm2 is, its device)
            shutil.copy(real / "llmos.toml", Path(tmp) / "llmos.toml")
        with llmos.boot(Config.load(tmp), load_entrypoints=False, max_running=16) as kernel:
            src = kernel.load("smollm2", driver="torch").driver.model_dir
            ctx.log(f"B2: making {n} LoRA adapters")
            for i in range(n):
                torch.manual_seed(i)
                model = get_peft_model(AutoModelForCausalLM.from_pretrained(src),
                                       LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # real deltas, not B = 0
                model.save_pretrained(Path(tmp) / f"lora{i}")
                kernel.install_module(str(Path(tmp) / f"lora{i}"), name=f"lora{i}", base="smollm2")
                kernel.insmod(f"lora{i}")
            yield kernel, Path(tmp)


def _run_batch(kernel, adapters: list[str]) -> float:
    started = time.perf_counter()
    handles = [kernel.submit(p, adapter=a, max_tokens=n, ignore_eos=True, temperature=0)  # greedy, as PEFT's in B2b
               for p, n, a in zip(PROMPTS, OUTPUT_LENGTHS, adapters)]
    total = sum(len(h.result().token_ids) for h in handles)
    return total / (time.perf_counter() - started)


@benchmark("B2", "16 requests spread over 8 adapters vs the same requests all on one adapter (torch)")
def b2(ctx: BenchContext) -> BenchResult:
    with _kernel_with_adapters(ctx, N_ADAPTERS) as (kernel, _tmp):
        kernel.generate("warm up", adapter="lora0", max_tokens=4)
        baseline = _run_batch(kernel, ["lora0"] * len(PROMPTS))
        candidate = _run_batch(kernel, [f"lora{i % N_ADAPTERS}" for i in range(len(PROMPTS))])
    return BenchResult("B2", baseline, candidate, "tokens/s", 0.9, description="mixed adapters in one batch")


@benchmark("B2b", "16 requests over 8 adapters: mixed batches vs PEFT set_adapter switching per request")
def b2b(ctx: BenchContext) -> BenchResult:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _kernel_with_adapters(ctx, N_ADAPTERS) as (kernel, tmp):
        kernel.generate("warm up", adapter="lora0", max_tokens=4)
        names = [f"lora{i % N_ADAPTERS}" for i in range(len(PROMPTS))]
        candidate = _run_batch(kernel, names)
        driver = kernel.load("smollm2", driver="torch").driver
        src, device, dtype = driver.model_dir, driver.device, driver.model.dtype  # the baseline runs where it does
        ctx.log(f"B2b: the same requests one at a time, switching adapters with set_adapter ({device}, {dtype})")
        tok = AutoTokenizer.from_pretrained(src)
        base = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(device)
        model = PeftModel.from_pretrained(base, tmp / "lora0", adapter_name="lora0")
        for i in range(1, N_ADAPTERS):
            model.load_adapter(tmp / f"lora{i}", adapter_name=f"lora{i}")
        model.eval()

        def switching() -> float:
            started, total = time.perf_counter(), 0
            with torch.inference_mode():
                for p, n, name in zip(PROMPTS, OUTPUT_LENGTHS, names):
                    model.set_adapter(name)
                    ids = tok(p, return_tensors="pt").input_ids.to(device)
                    out = model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                    total += out.shape[1] - ids.shape[1]
            return total / (time.perf_counter() - started)

        # on a thread that ends: an OpenMP team left on this one would slow the next run's candidate by
        # ~30% on 2 cores (kernel/lib/threads.py), the cause of B2b's 4.7x/3.2x runs
        baseline = in_passing_thread(switching)
    return BenchResult("B2b", baseline, candidate, "tokens/s", 3.0, description="mixed-adapter serving vs switching")


@benchmark("B3t", "B3 on the torch driver: 8 requests sharing a long system prompt, TTFT without vs with prefix reuse")
def b3t(ctx: BenchContext) -> BenchResult:
    return shared_prefix_ttft(ctx, "B3t", "torch", 3.0)
