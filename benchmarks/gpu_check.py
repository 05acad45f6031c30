"""`make gpu-check`: the CUDA paths end to end on a machine with an NVIDIA GPU, and their figures.

What it checks, in order (each line says PASS, FAIL or SKIP and what it measured):
1. torch sees a CUDA device (name, memory, bf16).
2. The torch driver on CUDA: a greedy answer from SmolLM2, the engine on "cuda" in bf16.
3. Mixed LoRA adapters on CUDA: the gathered one-matmul-pair path (drivers/torch_lora.py) gives the
   logits of PEFT's own per-row path for a batch over 3 adapters and the base model (bf16 tolerance),
   and 16 requests over 8 adapters decoded together match each request decoded alone (count reported:
   bf16 kernels may part at near ties).
4. llama.cpp offload: this llama-cpp-python is a GPU build, the model loads with every layer offloaded
   (engine device "gpu") and answers.
5. Benchmarks on the GPU, baseline and candidate on the same device and dtype: B1a, B2, B2b (torch) and
   B4 (llama.cpp), with --repeat runs each (median and spread).

Exit status: 0 when every check passed, 1 when one failed, 2 when there is no CUDA device (nothing to
check). `--json FILE` writes every figure. Runs offline on the embedded model, or `--model FILE.gguf`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, check: str, status: str, detail: str, **figures) -> None:
        self.rows.append({"check": check, "status": status, "detail": detail, **figures})
        print(f"{status:4}  {check}: {detail}", flush=True)

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)


def _section(report: Report, name: str, fn) -> None:
    started = time.monotonic()
    try:
        fn(report)
    except Exception as exc:  # noqa: BLE001 - one check failing must not hide the others
        report.add(name, "FAIL", f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    print(f"      ({name}: {time.monotonic() - started:.1f} s)", flush=True)


def check_device(report: Report) -> None:
    import torch

    props = torch.cuda.get_device_properties(0)
    report.add("cuda", "PASS", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 "
               f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}, torch {torch.__version__}",
               device=props.name)


def check_torch_driver(kernel, report: Report) -> None:
    c = kernel.chat(QUESTION, driver="torch", max_tokens=12, temperature=0)
    engine = next(e for e in kernel.engines() if e["driver"] == "torch")
    driver = kernel.load("smollm2", driver="torch").driver
    ok = engine["device"].startswith("cuda") and "Paris" in c.text
    report.add("torch driver on CUDA", "PASS" if ok else "FAIL",
               f"device {engine['device']}, {driver.model.dtype}, answer {c.text!r}, "
               f"{c.metrics['tokens_per_s']:.0f} tok/s")


def check_mixed_adapters(kernel, report: Report, workdir: Path) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmos.drivers.torch_lora import GatheredLora

    driver = kernel.load("smollm2", driver="torch").driver
    src, device, dtype = driver.model_dir, driver.device, driver.model.dtype
    paths = []
    for i, targets in enumerate((["q_proj", "v_proj"], ["k_proj", "o_proj"], ["q_proj", "down_proj"])):
        torch.manual_seed(i)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(src),
                           LoraConfig(r=4 * (i + 1), lora_alpha=8 * (i + 1), target_modules=targets,
                                      init_lora_weights=False))
        paths.append(workdir / f"check{i}")
        m.save_pretrained(paths[-1])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(device),
                                      str(paths[0]), adapter_name="a0")
    for i in (1, 2):
        model.load_adapter(str(paths[i]), adapter_name=f"a{i}")
    model.eval()
    names = ["__base__", "a0", "a1", "a2", "a1", "__base__"]
    ids = torch.randint(100, 5000, (len(names), 24), device=device)
    gathered = GatheredLora(model, "__base__")
    with torch.inference_mode():
        peft_rows = model(input_ids=ids, adapter_names=names).logits.float()
        with gathered.apply(names):
            got = model(input_ids=ids).logits.float()
        gathered.invalidate()
        model.float()  # the reference: PEFT's own path in fp32
        exact = model(input_ids=ids, adapter_names=names).logits
    # in bf16 both paths round (on an H200, 2026-12-04, they were 0.914 apart): the gathered path must be
    # as close to the fp32 reference as PEFT's own bf16 path is
    ours, theirs = float((got - exact).abs().max()), float((peft_rows - exact).abs().max())
    spread = float((exact[1] - exact[0]).abs().max())
    ok = gathered.usable() and ours <= 1.5 * theirs + 0.05 and spread > 1.0
    report.add("gathered LoRA vs PEFT per-row (CUDA)", "PASS" if ok else "FAIL",
               f"max |logit error| vs fp32: gathered {ours:.3f}, PEFT per-row {theirs:.3f} (adapters move logits "
               f"by up to {spread:.1f})", gathered_error=ours, peft_error=theirs)

    for i, path in enumerate(paths):
        kernel.install_module(str(path), name=f"check{i}", base="smollm2")
    adapters = [None, "check0", "check1", "check2"] * 4
    prompts = [f"Question {i}: name a colour." for i in range(16)]
    alone = [kernel.generate(p, adapter=a, driver="torch", max_tokens=16, temperature=0).token_ids
             for p, a in zip(prompts, adapters)]
    handles = [kernel.submit(p, adapter=a, driver="torch", max_tokens=16, temperature=0)
               for p, a in zip(prompts, adapters)]
    together = [h.result(300).token_ids for h in handles]
    same = sum(a == b for a, b in zip(alone, together))
    report.add("mixed-adapter batch vs each alone (CUDA)", "PASS" if same >= 12 else "FAIL",
               f"{same}/16 identical greedy outputs (bf16 batch shapes may part at near ties)", identical=same)


def check_llamacpp_offload(kernel, report: Report) -> None:
    from llmos.drivers import llamacpp_lib as lib

    if not lib.gpu_offload():
        report.add("llama.cpp offload", "FAIL", f"llama-cpp-python {lib.llama_cpp.__version__} is a CPU-only build: "
                   "`make clean install` on a machine with an NVIDIA GPU and nvcc builds it with CUDA (LLMOS_CUDA=1 forces it)")
        return
    c = kernel.chat(QUESTION, driver="llamacpp", max_tokens=12, temperature=0)
    engine = next(e for e in kernel.engines() if e["driver"] == "llamacpp")
    ok = engine["device"] == "gpu" and "Paris" in c.text
    report.add("llama.cpp offload", "PASS" if ok else "FAIL",
               f"device {engine['device']}, answer {c.text!r}, {c.metrics['tokens_per_s']:.0f} tok/s")


def _in_child(report: Report, check: str, model: str | None, together: bool) -> None:
    """Run a llama.cpp check in a child process (`--child`): its lines join the report; a death by a
    signal is a FAIL naming it."""
    argv = [sys.executable, "-m", "llmos.benchmarks.gpu_check", "--child", "together" if together else "llamacpp"]
    proc = subprocess.run(argv + (["--model", model] if model else []), capture_output=True, text=True, timeout=600)
    rows = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("ROW:: ")]
    for row in rows:
        report.add(row.pop("check"), row.pop("status"), row.pop("detail"), **row)
    if proc.returncode != 0 or not rows:
        why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        report.add(check, "FAIL", f"the child process ended with {why}: {proc.stderr.strip()[-400:]}")


def _child(kind: str, model: str | None) -> int:
    import llmos
    from llmos.kernel.config import Config

    report = Report()
    with tempfile.TemporaryDirectory(prefix="llmos-gpu-check-") as tmp:
        if model:
            (Path(tmp) / "llmos.toml").write_text(f'[models.smollm2]\npath = "{Path(model).resolve()}"\n')
        with llmos.boot(Config.load(tmp), load_entrypoints=False) as kernel:
            if kind == "together":
                kernel.chat(QUESTION, driver="torch", max_tokens=4, temperature=0)
            check_llamacpp_offload(kernel, report)
            if kind == "together":
                report.rows[-1]["check"] = "torch and llama.cpp CUDA in one process"
    for row in report.rows:
        print("ROW:: " + json.dumps(row), flush=True)
    return 0


def run_benchmarks(home: str, names: list[str], repeat: int, report: Report) -> None:
    from . import llamacpp_bench, torch_bench
    from .registry import REGISTRY, BenchContext, BenchSummary

    del llamacpp_bench, torch_bench  # imported to register their benchmarks
    for name in names:
        fn, _desc = REGISTRY[name]
        runs = []
        for _ in range(repeat):
            result = fn(BenchContext(home=home, log=lambda msg: print(f"      {msg}", flush=True)))
            runs.append(result)
        s = BenchSummary(tuple(runs))
        report.add(f"{name} on the GPU", "PASS" if s.met else "FAIL",
                   f"{s.first.description}: baseline {s.baseline:.3g} vs candidate {s.candidate:.3g} {s.first.unit}, "
                   f"{s.ratio:.2f}x ({s.ratios[0]:.2f}-{s.ratios[-1]:.2f}x over {repeat}), target {s.first.target}x",
                   **{k: v for k, v in s.as_dict().items() if k in ("baseline", "candidate", "ratio", "ratio_min",
                                                                   "ratio_max", "target", "unit")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a SmolLM2 GGUF file (default: the embedded one)")
    parser.add_argument("--bench", default="B1a,B2,B2b,B4", help="benchmarks to run on the GPU ('' for none)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each benchmark (the median decides)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU anyway (to test this script)")
    parser.add_argument("--child", choices=["llamacpp", "together"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.model)

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"no CUDA device: torch {torch.__version__} sees none (a CPU build, or no NVIDIA driver); "
              "nothing to check here", file=sys.stderr)
        return 2
    import llmos
    from llmos.kernel.config import Config

    report = Report()
    with tempfile.TemporaryDirectory(prefix="llmos-gpu-check-") as tmp:
        home = Path(tmp)
        if args.model:
            (home / "llmos.toml").write_text(f'[models.smollm2]\npath = "{Path(args.model).resolve()}"\n')
        if torch.cuda.is_available():
            _section(report, "cuda", check_device)
        with llmos.boot(Config.load(home), load_entrypoints=False, max_running=16) as kernel:
            _section(report, "torch driver on CUDA", lambda r: check_torch_driver(kernel, r))
            _section(report, "mixed adapters", lambda r: check_mixed_adapters(kernel, r, home))
        # llama.cpp's CUDA in a process of its own: on an H200 (2026-12-04) a process that had run torch on CUDA
        # died without a word when the llama.cpp driver loaded next (not yet diagnosed); `together` tells
        _section(report, "llama.cpp offload", lambda r: _in_child(r, "llama.cpp offload", args.model, False))
        _section(report, "torch and llama.cpp CUDA in one process",
                 lambda r: _in_child(r, "torch and llama.cpp CUDA in one process", args.model, True))
        names = [n for n in args.bench.split(",") if n]
        if names:
            _section(report, "benchmarks", lambda r: run_benchmarks(str(home), names, args.repeat, r))
    if args.json:
        Path(args.json).write_text(json.dumps(report.rows, indent=1))
    print("gpu-check:", "FAILED" if report.failed else "all passed", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
