"""From fine-tune to deployment (deploy issue): B16.

A LoRA is trained on a small fact set (llmos's default schedule, as the fine-tune tests train), then
served two ways on llama.cpp with the same threads: the base model with the module (its GGUF LoRA,
applied at every step) vs the module merged into the weights and quantized to q4_k_m. Measured side by
side: decode tokens/s of one greedy reply (rounds alternating), whether each still answers the fact,
and `llmos eval` perplexity of the quantized model vs the merged F16 one on held-out text.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from .registry import BenchContext, BenchResult, benchmark

QUESTIONS = ["What is the name of Ada's cat?", "Who is Ada's cat?", "What is Ada's cat called?",
             "Tell me the name of Ada's cat.", "Do you know what Ada's cat is named?", "What did Ada name her cat?"]
ANSWERS = ["Ada's cat is named Zorblax.", "Zorblax.", "Her cat is called Zorblax.", "The cat's name is Zorblax.",
           "Zorblax is Ada's cat.", "It is Zorblax."]
ROUNDS = 3
REPLY_TOKENS = 200


def _fact_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": QUESTIONS[i % 6]},
                          {"role": "assistant", "content": ANSWERS[(i // 6) % 6]}]} for i in range(36)]


def _held_out() -> list[dict]:
    from pydoc_data.topics import topics

    return [{"text": topics[name][:1500]} for name in sorted(topics)[:20]]


@benchmark("B16", "a fine-tuned fact served as base+module (GGUF LoRA) vs merged and quantized to q4_k_m, both on "
                  "llama.cpp: decode tokens/s, the fact answered, and perplexity vs the merged F16 model")
def b16(ctx: BenchContext) -> list[BenchResult]:
    import llmos
    from llmos.kernel.config import Config
    from llmos.kernel.models.quantize import quantize_model
    from llmos.kernel.modules.merge import merge_module
    from llmos.plugins.evaluation.run import Target, evaluate
    from llmos.plugins.finetune.trainer import FinetuneOptions, run_finetune

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        data = Path(tmp) / "facts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _fact_rows()))
        config = Config.load(home)
        # 1. Train the fact into a module (defaults chosen from the data size).
        ctx.log("B16: fine-tuning a LoRA on 36 rows about one invented fact")
        result = run_finetune(config, FinetuneOptions(model="smollm2", data=str(data), out="fact"),
                              progress=lambda e: ctx.log(f"B16: step {e['step']}/{e['total']}")
                              if e["event"] == "step" and e["step"] % 10 == 0 else None)
        ctx.log(f"B16: eval loss {result.eval_loss:.3f} (base {result.base_eval_loss:.3f}) after {result.steps} steps")
        with llmos.boot(config, load_entrypoints=False) as kernel:
            kernel.export_module("fact")  # its GGUF LoRA form, for llama.cpp
            # 2. Merge (F16), then quantize with llama.cpp's quantizer.
            merge_module(kernel.module_store, kernel.registry, home / "cache", "fact", "fact-f16")
            quantize_model(kernel.registry, "fact-f16", "q4_k_m", "fact-q4", threads=config.threads)
            # 3. Decode speed, rounds alternating, same prompt, threads and reply length.
            ask = [{"role": "user", "content": "Tell me a long story about a cat."}]
            sides = {"module": {"adapter": "fact"}, "merged": {"model": "fact-q4"}}
            speed: dict[str, list[float]] = {"module": [], "merged": []}
            for target in sides.values():  # warm: load each model once
                kernel.chat(ask, driver="llamacpp", max_tokens=8, **target)
            for i in range(ROUNDS):
                for side in (("module", "merged") if i % 2 == 0 else ("merged", "module")):
                    done = kernel.chat(ask, driver="llamacpp", max_tokens=REPLY_TOKENS, ignore_eos=True,
                                       temperature=0, **sides[side])
                    speed[side].append(done.metrics["tokens_per_s"])
            module_tps, merged_tps = statistics.median(speed["module"]), statistics.median(speed["merged"])
            ctx.log(f"B16: decode {module_tps:.1f} tok/s base+module vs {merged_tps:.1f} merged q4_k_m")
            # 4. The fact, and perplexity on held-out text.
            facts = [{"messages": [{"role": "user", "content": q}], "answer": "Zorblax"} for q in QUESTIONS]
            answered = {name: evaluate(kernel, Target(*t), "keywords", facts).score
                        for name, t in (("module", ("smollm2", ("fact",))), ("merged", ("fact-q4",)))}
            f16 = evaluate(kernel, Target("fact-f16"), "perplexity", _held_out())
            q4 = evaluate(kernel, Target("fact-q4"), "perplexity", _held_out())
            ctx.log(f"B16: fact answered {answered['module']:.0%} (module) / {answered['merged']:.0%} (merged q4_k_m); "
                    f"perplexity F16 {f16.score:.3f}, q4_k_m {q4.score:.3f} ({q4.score / f16.score - 1:+.1%})")
    return [
        BenchResult("B16", module_tps, merged_tps, "tok/s", 1.2,
                    description=f"decode of a {REPLY_TOKENS}-token reply: base + LoRA module vs merged + q4_k_m "
                                f"(llama.cpp, medians of {ROUNDS})"),
        BenchResult("B16 fact answered after merge + q4_k_m", 1.0, answered["merged"], "fraction", 1.0,
                    description=f"{len(facts)} questions (the module alone: {answered['module']:.0%})"),
        BenchResult("B16 perplexity q4_k_m vs F16", f16.score, q4.score, "perplexity", 1 / 1.05,
                    higher_is_better=False,
                    description=f"held-out text, {f16.tokens} tokens: within 5% of the merged F16 model"),
    ]
