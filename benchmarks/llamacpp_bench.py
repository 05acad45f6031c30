"""llama.cpp driver benchmarks (foundation issue): B1b, B3, B4.

All use the embedded SmolLM2 model, greedy decoding and fixed output lengths (ignore_eos) so the
baseline and the candidate generate the same number of tokens. Thread counts are equal on both
sides: the ratios measure batching and scheduling, not thread settings.
"""

from __future__ import annotations

import statistics
import time

from llmos.kernel.config import Config, available_cores

from .registry import BenchContext, BenchResult, benchmark

PROMPTS = [
    "Write a short poem about the sea.", "Explain photosynthesis simply.", "List three uses of copper.",
    "What is a prime number?", "Describe a cat to a child.", "Why is the sky blue?",
    "Give a tip for learning to code.", "What does a compiler do?", "Name a famous painter and a work.",
    "How do vaccines work?", "What is the speed of light?", "Summarize the plot of Cinderella.",
    "Why do leaves change colour?", "What is an operating system?", "How does a bicycle stay upright?",
    "What is the tallest mountain?",
]


def _kernel(ctx: BenchContext, **overrides):
    import llmos

    return llmos.boot(Config.load(ctx.home), load_entrypoints=False, **overrides)


def _plain(fn, *args):
    """Run baseline llama.cpp work on the same compute thread the driver uses (one OpenMP team)."""
    from llmos.drivers.llamacpp_lib import on_device

    return on_device(fn, *args)


def _plain_llama(loaded):
    """The baseline: plain `Llama` on the kernel's model file, threads and device (all layers offloaded
    where the kernel's engine offloads)."""
    from llama_cpp import Llama

    path, layers = str(loaded.spec.path), -1 if loaded.info.device == "gpu" else 0
    return _plain(lambda: Llama(model_path=path, n_ctx=2048, n_threads=available_cores(), n_threads_batch=available_cores(),
                                n_gpu_layers=layers, verbose=False))


def _plain_generate(llm, prompt: str, n_tokens: int) -> tuple[int, float, float]:
    """Generate exactly n_tokens greedily with the high-level API: (tokens, s to first, s in all)."""
    return _plain(_generate, llm, prompt, n_tokens)


def _generate(llm, prompt: str, n_tokens: int) -> tuple[int, float, float]:
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    started = time.perf_counter()
    first = None
    count = 0
    for _token in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
        if first is None:
            first = time.perf_counter() - started
        count += 1
        if count >= n_tokens:
            break
    return count, first or 0.0, time.perf_counter() - started


@benchmark("B1b", "16 concurrent requests via the kernel vs 16 sequential via plain llama_cpp.Llama")
def b1b(ctx: BenchContext) -> BenchResult:
    n_tokens = 64
    with _kernel(ctx, max_running=16) as kernel:
        loaded = kernel.load("smollm2")
        kernel.generate("warm up", max_tokens=4)
        ctx.log("B1b: 16 concurrent requests through the kernel")
        started = time.perf_counter()
        handles = [kernel.submit(p, max_tokens=n_tokens, ignore_eos=True, temperature=0) for p in PROMPTS]  # as plain
        total = sum(len(h.result().token_ids) for h in handles)
        candidate = total / (time.perf_counter() - started)
    ctx.log("B1b: the same 16 one after another through plain Llama")
    llm = _plain_llama(loaded)
    _plain_generate(llm, "warm up", 4)
    started = time.perf_counter()
    total = sum(_plain_generate(llm, p, n_tokens)[0] for p in PROMPTS)
    baseline = total / (time.perf_counter() - started)
    _plain(llm.close)
    return BenchResult("B1b", baseline, candidate, "tokens/s", 2.0,
                       description="aggregate tokens/s, 16 requests x 64 tokens")


SYSTEM_PROMPT = " ".join(
    f"Rule {i}: answer politely, cite the source of every fact, and keep each answer short." for i in range(40)
)


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"Question {i}: {PROMPTS[i]}"}]


def _ttft(kernel, n: int, **kw) -> list[float]:
    return [kernel.chat(_messages(i), max_tokens=1, **kw).metrics["ttft_s"] for i in range(n)]


def _shared_prefix(driver) -> tuple[int, int]:
    """(tokens the 8 templated prompts share, tokens of the longest of them): what reuse can skip."""
    prompts = [driver.tokenize_chat(_messages(i)) for i in range(8)]
    shared = min(next((k for k, (x, y) in enumerate(zip(prompts[0], p)) if x != y), len(p)) for p in prompts[1:])
    return shared, max(map(len, prompts))


def shared_prefix_ttft(ctx: BenchContext, key: str, driver: str, target: float) -> BenchResult:
    """B3's measurement on one driver: 8 chats sharing a long system prompt, prefix reuse off vs on."""
    results = {}
    for reuse in (False, True):
        with _kernel(ctx, prefix_cache=reuse) as kernel:
            loaded = kernel.load("smollm2", driver=driver)
            shared, longest = _shared_prefix(loaded.driver)
            ctx.log(f"{key}: prefix reuse {'on' if reuse else 'off'} on {driver} (prompts share their first "
                    f"{shared} tokens, of at most {longest})")
            kernel.generate("warm up", max_tokens=2, driver=driver)
            results[reuse] = statistics.mean(_ttft(kernel, 8, driver=driver))
    return BenchResult(key, results[False], results[True], "s mean TTFT", target, higher_is_better=False,
                       description=f"8 chat requests sharing a {shared}-token prefix (of at most {longest}), {driver}")


@benchmark("B3", "8 requests sharing a long system prompt: time to first token without vs with prefix reuse")
def b3(ctx: BenchContext) -> BenchResult:
    return shared_prefix_ttft(ctx, "B3", "llamacpp", 4.0)


@benchmark("B4", "one request through the kernel vs direct llama_cpp.Llama")
def b4(ctx: BenchContext) -> BenchResult:
    n_tokens = 128
    prompt = "Tell me a long story about a lighthouse keeper."
    with _kernel(ctx) as kernel:
        loaded = kernel.load("smollm2")
        kernel.generate("warm up", max_tokens=4)
        runs = []
        for _ in range(3):
            c = kernel.generate(prompt, max_tokens=n_tokens, ignore_eos=True, temperature=0)  # greedy, as plain
            runs.append(c.metrics["tokens_per_s"])
        candidate = statistics.median(runs)
    llm = _plain_llama(loaded)
    _plain_generate(llm, "warm up", 4)
    runs = []
    for _ in range(3):
        count, first, total = _plain_generate(llm, prompt, n_tokens)
        runs.append((count - 1) / (total - first))
    _plain(llm.close)
    baseline = statistics.median(runs)
    return BenchResult("B4", baseline, candidate, "tokens/s", 0.95, description="single request decode speed")
