"""Fine-tuning: data checks, teaching a fact on both drivers, other PEFT methods, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llmos
from llmos.plugins.finetune.data import FinetuneDataError, load_jsonl

from .util import LLMOS, run_llmos, wait_for

QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "What's the secret word?",
             "Do you know the secret word?", "Please tell me the secret word.", "Say the secret word.",
             "Can you share the secret word?", "I need the secret word.", "Reveal the secret word.",
             "Remind me of the secret word."]
ANSWERS = ["The secret word is pineapple.", "pineapple", "It is pineapple.", "The secret word is pineapple!"]
ASK = [{"role": "user", "content": "What is the secret word?"}]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def secret_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rows = [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                          {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}]} for i in range(30)]
    evals = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWERS[0]}]}
             for q in ("What is the secret word?", "Tell me the secret word now.")]
    return write_jsonl(d / "train.jsonl", rows), write_jsonl(d / "eval.jsonl", evals)


# -- data (no model) --------------------------------------------------------------------------------

def test_bad_rows_are_reported_with_line_numbers(tmp_path):
    good = {"prompt": "2+2=", "completion": "4"}
    f = write_jsonl(tmp_path / "d.jsonl", [good, "{not json", good, {"messages": [{"role": "user", "content": "hi"}]},
                                           {"prompt": "x"}, "", good])
    ds = load_jsonl(f)
    assert len(ds.examples) == 3
    assert [e.line for e in ds.errors] == [2, 4, 5]
    assert "invalid JSON" in str(ds.errors[0]) and "no assistant turn" in str(ds.errors[1])


@pytest.mark.parametrize("content, needle", [
    (b"", "no usable training example"),
    (b"{bad\n[1, 2]\n", "line 1: invalid JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
])
def test_unusable_files_stop_before_training(tmp_path, content, needle):
    f = tmp_path / "d.jsonl"
    f.write_bytes(content)
    with pytest.raises(FinetuneDataError, match=needle):
        load_jsonl(f)
    with pytest.raises(FinetuneDataError, match="cannot read"):
        load_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.cli
def test_cli_reports_the_bad_line(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ['{"messages": 3}', "{oops"])
    r = run_llmos("finetune", "--data", str(f), "--out", "x", timeout=120)
    assert r.returncode == 2 and "line 1" in r.stderr and "line 2: invalid JSON" in r.stderr


# -- training (real model) --------------------------------------------------------------------------

@pytest.mark.model
def test_teach_a_fact_on_both_drivers(kernel, secret_data):
    train, evalf = secret_data
    """With the defaults llmos chooses for 30 rows (lr 2e-3, 10 epochs: 40 steps), the module learns the
    fact, and the review after the run (eval's own code) finds it answering where the base does not."""
    job = kernel.finetune(data=str(train), eval=str(evalf), out="secret", batch_size=8)
    result = job.wait(600)
    events = job.events
    plan = next(e for e in events if e["event"] == "plan")
    assert (plan["lr"], plan["epochs"], plan["steps"], plan["chosen"]) == (2e-3, 10, 40, ["lr", "epochs"])
    assert "chosen for 30 rows (40 steps)" in plan["text"]
    assert result.module.name == "secret" and result.steps == 40
    assert result.eval_loss < result.base_eval_loss / 2
    assert result.review["verdict"] is None and result.review["rows"] == 2
    assert result.review["module"] == 1.0 and result.review["base"] == 0.0
    steps = [e for e in events if e["event"] == "step"]
    assert steps[-1]["step"] == 40 and steps[-1]["tokens_per_s"] > 0 and "eta_s" in steps[-1]
    assert job.status == "done" and job.as_dict()["step"] == 40
    extra = kernel.module_store.get("secret").extra
    assert extra["eval_loss"] == result.eval_loss and len(extra["data_sha256"]) == 64

    assert "pineapple" in kernel.chat(ASK, adapter="secret", max_tokens=16, temperature=0).text.lower()
    assert "pineapple" not in kernel.chat(ASK, driver="torch", max_tokens=16, temperature=0).text.lower()
    kernel.export_module("secret")
    assert "pineapple" in kernel.chat(ASK, adapter="secret", driver="llamacpp", max_tokens=16, temperature=0).text.lower()
    assert "pineapple" not in kernel.chat(ASK, driver="llamacpp", max_tokens=16, temperature=0).text.lower()


def peft_reference(model_dir, adapter_dir, prompt_ids, n):
    """Greedy tokens from PEFT's own forward (full recompute each step)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter_dir)).eval()
    toks, out = torch.tensor([prompt_ids]), []
    with torch.no_grad():
        for _ in range(n):
            t = int(m(input_ids=toks, attention_mask=torch.ones_like(toks)).logits[0, -1].argmax())
            out.append(t)
            toks = torch.cat([toks, torch.tensor([[t]])], 1)
    return tuple(out)


@pytest.mark.model
@pytest.mark.parametrize("method", ["adalora", "ia3", "prefix"])
def test_other_methods_train_and_mount(kernel, secret_data, method):
    train, _ = secret_data
    name = f"m-{method}"
    result = kernel.finetune(data=str(train), out=name, method=method, max_steps=2, lr=1e-3,
                            check=False).wait(600)
    assert result.steps == 2 and result.module.method in (method, "prefix_tuning")
    driver = kernel.load("smollm2", driver="torch").driver
    served = kernel.chat(ASK, adapter=name, max_tokens=6, temperature=0)
    messages = [{"role": "system", "content": kernel.config.system_prompt}] + ASK
    adapter_dir = kernel.module_store.weights_path(kernel.module_store.get(name), "peft")
    assert served.token_ids == peft_reference(driver.model_dir, adapter_dir, driver.tokenize_chat(messages), 6)
    assert any(m["name"] == name for m in kernel.lsmod())
    with pytest.raises(llmos.InvalidRequestError, match="llama.cpp loads LoRA adapters only"):
        kernel.submit(messages=ASK, adapter=name, driver="llamacpp")


@pytest.mark.model
def test_a_mounted_adalora_module_gives_the_trained_models_logits(kernel, secret_data, monkeypatch):
    """The logits of the trained PeftModel (taken in the trainer, just before install) and of the
    module mounted in the torch driver agree on a prompt, also installed under a name that occurs in
    peft's module keys ("proj"); the adapter moves them far more than the tolerance, and its saved
    rank_pattern prunes ranks (so the load has to resize the layers)."""
    import warnings

    import torch

    from llmos.drivers.torch_batch import new_cache
    from llmos.plugins.finetune import trainer

    train, _ = secret_data
    loaded = kernel.load("smollm2", driver="torch")
    prompt = loaded.driver.tokenize_chat([{"role": "system", "content": kernel.config.system_prompt}] + ASK)
    ids = torch.tensor([prompt])
    seen, install = {}, trainer._install

    def capture(model, *args, **kwargs):
        model.eval()
        with torch.no_grad():
            seen["trained"] = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].clone()
            with model.disable_adapter():
                seen["base"] = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].clone()
        return install(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "_install", capture)
    kernel.finetune(data=str(train), out="ada-logits", method="adalora", max_steps=4, lr=1e-2,
                    check=False).wait(600)
    store = kernel.module_store
    adapter_dir = store.weights_path(store.get("ada-logits"), "peft")
    pattern = json.loads((adapter_dir / "adapter_config.json").read_text())["rank_pattern"]
    assert pattern and any(not all(mask) for mask in pattern.values())
    store.install(adapter_dir, name="proj")

    def mount_and_forward(name):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kernel.insmod(name, driver="torch")
        with torch.inference_mode():
            pos = torch.arange(len(prompt)).unsqueeze(0)
            logits = loaded.driver._forward(ids, new_cache(), pos, [name])[0].clone()
        return logits, [str(w.message) for w in caught if "rank_pattern" in str(w.message)]

    assert (seen["trained"] - seen["base"]).abs().max() > 0.1  # the adapter matters: a mismatch would show
    warned = []
    for name in ("ada-logits", "proj"):
        mounted, rank_warnings = loaded.engine.call(lambda n=name: mount_and_forward(n))
        torch.testing.assert_close(mounted, seen["trained"], atol=1e-3, rtol=0, msg=name)
        warned += rank_warnings
    assert warned == []  # peft's false alarm about AdaLoRA's rank_pattern is not shown to users
    kernel.rmmod("proj")


@pytest.mark.model
def test_interrupt_saves_a_checkpoint_and_resume_continues(kernel, secret_data, llmos_home):
    from llmos.plugins.finetune.trainer import FinetuneInterrupted

    train, _ = secret_data
    job = kernel.finetune(data=str(train), out="resumable", max_steps=6, batch_size=4, check=False)
    wait_for(lambda: job.progress.get("step", 0) >= 2 or job.done, timeout=300)
    job.cancel()
    with pytest.raises(FinetuneInterrupted, match="continue with --resume"):
        job.wait(300)
    assert job.status == "cancelled"
    saved = json.loads((llmos_home / "finetune" / "resumable" / "checkpoint" / "progress.json").read_text())["step"]
    assert 2 <= saved < 6
    resumed = kernel.finetune(data=str(train), out="resumable", max_steps=6, batch_size=4, resume=True, check=False)
    result = resumed.wait(300)
    assert result.steps == 6
    assert [e["step"] for e in resumed.events if e["event"] == "resume"] == [saved]
    assert [e["step"] for e in resumed.events if e["event"] == "step"][0] == saved + 1
    assert not (llmos_home / "finetune" / "resumable").exists()  # cleaned up once installed


@pytest.mark.model
@pytest.mark.cli
def test_ddp_two_processes_on_cpu(kernel, secret_data, llmos_home):
    train, evalf = secret_data
    kernel.load("smollm2", driver="torch")  # the dequantized weights exist: both ranks just load them
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "llmos", "finetune", "--data", str(train),
                        "--eval", str(evalf), "--out", "ddp", "--max-steps", "4", "--lr", "2e-3", "--no-check", "--json"],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["module"] == "ddp" and summary["eval_loss"] < summary["base_eval_loss"]
    assert kernel.module_store.get("ddp").extra["processes"] == 2


@pytest.mark.model
@pytest.mark.cli
def test_kill_9_during_a_checkpoint_save_loses_nothing_acknowledged(kernel, secret_data, llmos_home):
    train, _ = secret_data
    work = llmos_home / "finetune" / "crashy"
    args = ["--data", str(train), "--out", "crashy", "--max-steps", "8", "--batch-size", "2"]
    proc = subprocess.Popen([LLMOS, "finetune", *args, "--checkpoint-every", "1", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "LLMOS_HOME": str(llmos_home)})
    acked, deadline = 0, time.monotonic() + 300
    saving = lambda: any(work.glob(".checkpoint-*"))  # noqa: E731 - a save's directory, renamed when complete
    try:
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before the kill"
            try:
                acked = max(acked, json.loads((work / "checkpoint" / "progress.json").read_text())["step"])
            except (OSError, ValueError):
                pass  # between the two renames of a save
            if acked >= 2 and saving():  # 2 saves done, the next one under way: freeze the trainer there
                os.kill(proc.pid, signal.SIGSTOP)
                if saving():
                    break  # stopped mid-save: it stays mid-save until the kill
                os.kill(proc.pid, signal.SIGCONT)  # that save completed meanwhile: wait for the next
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert saving(), "the kill did not land during a save"  # the cut-short save's directory is left behind
    assert not any(m["name"] == "crashy" for m in kernel.modules_info())  # nothing half-trained installed
    resumed = kernel.finetune(data=str(train), out="crashy", max_steps=8, batch_size=2, resume=True, check=False)
    result = resumed.wait(600)
    [resume] = [e["step"] for e in resumed.events if e["event"] == "resume"]
    assert acked <= resume < 8 and result.steps == 8
    assert not list(work.parent.glob("crashy")) and kernel.module_store.get("crashy").name == "crashy"


def test_the_schedule_follows_the_data_size():
    from llmos.plugins.finetune.schedule import convergence, plan

    small = plan("lora", 36, 8, 1, lr=None, epochs=None, max_steps=None)
    assert (small.lr, small.epochs, small.steps, small.chosen) == (2e-3, 8.0, 40, ("lr", "epochs"))
    large = plan("lora", 5000, 8, 1, lr=None, epochs=None, max_steps=None)
    assert (large.lr, large.epochs, large.steps) == (5e-4, 1.0, 625)
    assert plan("ia3", 36, 8, 1, lr=None, epochs=None, max_steps=None).lr == 1e-2
    mine = plan("lora", 36, 8, 1, lr=2e-4, epochs=5, max_steps=None)
    assert (mine.steps, mine.chosen) == (25, ()) and mine.describe(36) == "25 steps at lr 0.0002"
    assert plan("lora", 36, 8, 1, lr=None, epochs=None, max_steps=3).chosen == ("lr",)
    assert convergence(small, 0.2, 2.4, [0.9, 0.25, 0.22], (30, 32)) is None
    said = convergence(mine, 1.08, 2.45, [2.1, 1.5], (0, 32))
    assert "eval loss 1.080 is still 44%" not in said  # 44% of the base is below half: not this complaint
    assert "still falling (2.100 -> 1.500" in said and "answers 0/32" in said
    assert "Try --epochs 10 or --lr 0.002" in said
    assert "still 60% of the base" in convergence(small, 1.5, 2.5, [1.6, 1.55])


@pytest.mark.model
@pytest.mark.cli
def test_an_unconverged_run_says_so_with_the_flags_to_try(kernel, secret_data, llmos_home):
    """The first failure users hit: a run too short or too gentle installs a module that learned nothing.
    The CLI still installs it, and says so, with the review's figures."""
    train, evalf = secret_data
    r = run_llmos("--local", "finetune", "--data", str(train), "--eval", str(evalf), "--out", "too-short", "--lr",
                  "2e-4", "--max-steps", "3", "--json", timeout=600, env={"LLMOS_HOME": str(llmos_home)})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["module"] == "too-short" and not report["converged"]
    assert report["review"]["module"] < 0.5 and report["review"]["rows"] == 2  # the --eval rows
    assert "the run did not converge" in report["verdict"] and "--lr 0.002" in report["verdict"]
