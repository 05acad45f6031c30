"""The installed `llmos` command, run in a subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .util import LLMOS, run_llmos

pytestmark = pytest.mark.cli

llmos = run_llmos


def test_version_and_help():
    from llmos import __version__

    assert llmos("--version").stdout.strip() == f"llmos {__version__}"
    bare = llmos()
    assert "run" in bare.stdout + bare.stderr and "models" in bare.stdout + bare.stderr


@pytest.mark.model
def test_run_answers_with_the_embedded_model():
    r = llmos("run", "-t", "0", "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


@pytest.mark.model
def test_run_reads_stdin_and_prints_json():
    r = llmos("run", "-", "--json", "--max-tokens", "8", "-t", "0", stdin="Name a planet.")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["text"] and body["model"] == "smollm2" and body["usage"]["completion_tokens"] <= 8
    assert body["finish_reason"] in ("stop", "length")


def test_models_json_lists_builtins():
    r = llmos("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert {"smollm2", "gemma3-270m"} <= set(rows)
    assert rows["smollm2"]["drivers"][0] == "llamacpp" and rows["smollm2"]["path"].endswith(".gguf")
    assert rows["smollm2"]["size_bytes"] > 50_000_000


@pytest.mark.parametrize("args, needle", [
    (["run", ""], "prompt is empty"),
    (["run", "hi", "--max-tokens", "-3"], "max_tokens"),
    (["run", "hi", "--temperature", "5"], "temperature must be between"),
    (["run", "hi", "--model", "nope"], "unknown model 'nope'"),
])
def test_bad_input_is_one_line_error_exit_2(args, needle):
    r = llmos(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_non_gguf_model_file(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_text("not a model")
    r = llmos("run", "hi", "--model", str(bad), "--json")
    assert r.returncode == 2
    assert json.loads(r.stdout)["error"]["code"] == "invalid_model_file"


@pytest.mark.model
def test_prompt_too_long_names_the_fix():
    r = llmos("run", "--raw", "word " * 9000)
    assert r.returncode == 2 and "shorten the prompt or lower max_tokens" in r.stderr


def test_bench_unknown_name():
    r = llmos("bench", "B99")
    assert r.returncode == 2 and "B1b" in r.stderr


@pytest.mark.model
def test_bench_json_shape():
    r = llmos("bench", "B4", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert set(row) >= {"name", "baseline", "candidate", "unit", "ratio", "target"}
    assert row["name"] == "B4" and row["baseline"] > 0 and row["candidate"] > 0
    assert abs(row["ratio"] - row["candidate"] / row["baseline"]) < 0.01


@pytest.mark.model
def test_ctrl_c_stops_generation_cleanly():
    import signal
    import time

    # greedy: it keeps writing (a sampled story may end before the interrupt)
    proc = subprocess.Popen([LLMOS, "run", "--max-tokens", "3000", "-t", "0", "--raw", "Once upon a time"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"},
                            # as from a terminal: a run launched in the background (`cmd &` without job
                            # control) inherits SIGINT ignored, and then Ctrl-C never reaches the CLI
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.read(200)  # generation is under way, and long
    assert len(first) == 200 and proc.poll() is None, (first, proc.poll())
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (err, (first + out)[-300:])
    assert "interrupted" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def lora_dir(llmos_home, tmp_path_factory):
    import llmos

    from .lora import make_lora, torch_model_dir

    with llmos.boot(load_entrypoints=False) as k:
        src = torch_model_dir(k, llmos_home)
    return make_lora(src, tmp_path_factory.mktemp("cli-lora"), seed=2, targets=["k_proj", "o_proj", "up_proj"],
                     scale=4.0)


@pytest.mark.model
def test_module_lifecycle_from_the_cli(lora_dir):
    q = "What is the capital of France?"
    r = llmos("mod", "install", str(lora_dir), "--name", "cli-lora", "--base", "smollm2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["formats"] == ["peft"]
    [row] = [m for m in json.loads(llmos("mod", "ls", "--json").stdout) if m["name"] == "cli-lora"]
    assert row["base_model"] == "smollm2" and row["rank"] == 8 and row["loaded"] == []
    base = llmos("run", "--driver", "torch", "--max-tokens", "12", "-t", "0", q)
    tuned = llmos("run", "--adapter", "cli-lora", "--max-tokens", "12", "-t", "0", q)
    assert base.returncode == tuned.returncode == 0, tuned.stderr
    assert tuned.stdout != base.stdout
    refused = llmos("run", "--driver", "llamacpp", "--adapter", "cli-lora", q)
    assert refused.returncode == 2 and "llmos mod export" in refused.stderr
    r = llmos("mod", "export", "cli-lora", "--gguf", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["formats"] == ["peft", "gguf"]
    on_llama = llmos("run", "--driver", "llamacpp", "--adapter", "cli-lora", "--max-tokens", "12", "-t", "0", q)
    llama_base = llmos("run", "--driver", "llamacpp", "--max-tokens", "12", "-t", "0", q)
    assert on_llama.returncode == 0 and on_llama.stdout != llama_base.stdout
    assert llmos("mod", "rm", "cli-lora").returncode == 0
    gone = llmos("run", "--adapter", "cli-lora", q)
    assert gone.returncode == 2 and "unknown adapter 'cli-lora'" in gone.stderr
