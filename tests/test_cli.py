"""The installed `llmos` command, run in a subprocess like a user would.

Tests taking `cli` run twice: "local" (no daemon: each command boots an in-process kernel) and
"resident" (a daemon is up for the command's LLMOS_HOME: each command attaches to it). Same output."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .util import LLMOS, run_llmos

pytestmark = pytest.mark.cli

llmos = run_llmos


@pytest.fixture(scope="module")
def resident(tmp_path_factory):
    """A daemon on its own LLMOS_HOME, up for this module's resident-mode tests."""
    from .test_daemon import Daemon

    daemon = Daemon(tmp_path_factory.mktemp("cli-resident") / "home")
    daemon.up()
    yield daemon
    daemon.llmos("down")
    daemon.kill_all()


@pytest.fixture(params=["local", "resident"])
def cli(request):
    """`llmos ARGS...` in one mode (see the module docstring)."""
    env: dict[str, str] = {}
    if request.param == "resident":
        daemon = request.getfixturevalue("resident")
        env = {"LLMOS_HOME": str(daemon.home)}

    def run(*args: str, **kwargs):
        return run_llmos(*args, env={**env, **kwargs.pop("env", {})}, **kwargs)

    run.mode, run.env = request.param, env
    return run


def test_version_and_help():
    from llmos import __version__

    assert llmos("--version").stdout.strip() == f"llmos {__version__}"
    bare = llmos()
    assert "run" in bare.stdout + bare.stderr and "models" in bare.stdout + bare.stderr


@pytest.mark.model
def test_run_answers_with_the_embedded_model(cli):
    r = cli("run", "-t", "0", "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


@pytest.mark.model
def test_run_reads_stdin_and_prints_json(cli):
    r = cli("run", "-", "--json", "--max-tokens", "8", "-t", "0", stdin="Name a planet.")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["text"] and body["model"] == "smollm2" and body["usage"]["completion_tokens"] <= 8
    assert body["finish_reason"] in ("stop", "length")


def test_models_json_lists_builtins(cli):
    r = cli("models", "--json")
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
def test_bad_input_is_one_line_error_exit_2(cli, args, needle):
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_non_gguf_model_file(cli, tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_text("not a model")
    r = cli("run", "hi", "--model", str(bad), "--json")
    assert r.returncode == 2
    assert json.loads(r.stdout)["error"]["code"] == "invalid_model_file"


@pytest.mark.model
def test_prompt_too_long_names_the_fix(cli):
    r = cli("run", "--raw", "word " * 9000)
    assert r.returncode == 2 and "shorten the prompt or lower max_tokens" in r.stderr


def test_bench_unknown_name():
    r = llmos("bench", "B99")
    assert r.returncode == 2 and "B1b" in r.stderr


@pytest.mark.model
def test_bench_json_shape():
    r = llmos("bench", "B4", "--json", "--repeat", "2", timeout=600)
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert set(row) >= {"name", "baseline", "candidate", "unit", "ratio", "ratio_min", "ratio_max", "target", "met"}
    assert row["name"] == "B4" and len(row["runs"]) == 2
    for run in row["runs"]:  # each run measured both arms
        assert run["baseline"] > 0 and run["candidate"] > 0
        assert abs(run["ratio"] - run["candidate"] / run["baseline"]) < 0.01
    ratios = sorted(run["ratio"] for run in row["runs"])
    assert (row["ratio_min"], row["ratio_max"]) == (ratios[0], ratios[1])
    assert abs(row["ratio"] - sum(ratios) / 2) < 0.002  # the median of two
    assert row["met"] == (row["ratio"] >= row["target"])


@pytest.mark.model
def test_ctrl_c_stops_generation_cleanly(cli):
    import signal
    import time

    # greedy: it keeps writing (a sampled story may end before the interrupt)
    proc = subprocess.Popen([LLMOS, "run", "--max-tokens", "3000", "-t", "0", "--raw", "Once upon a time"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", **cli.env},
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
def test_module_lifecycle_from_the_cli(cli, lora_dir):
    q = "What is the capital of France?"
    r = cli("mod", "install", str(lora_dir), "--name", "cli-lora", "--base", "smollm2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["formats"] == ["peft"]
    [row] = [m for m in json.loads(cli("mod", "ls", "--json").stdout) if m["name"] == "cli-lora"]
    assert row["base_model"] == "smollm2" and row["rank"] == 8 and row["loaded"] == []
    base = cli("run", "--driver", "torch", "--max-tokens", "12", "-t", "0", q)
    tuned = cli("run", "--adapter", "cli-lora", "--max-tokens", "12", "-t", "0", q)
    assert base.returncode == tuned.returncode == 0, tuned.stderr
    assert tuned.stdout != base.stdout
    refused = cli("run", "--driver", "llamacpp", "--adapter", "cli-lora", q)
    assert refused.returncode == 2 and "llmos mod export" in refused.stderr
    r = cli("mod", "export", "cli-lora", "--gguf", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["formats"] == ["peft", "gguf"]
    on_llama = cli("run", "--driver", "llamacpp", "--adapter", "cli-lora", "--max-tokens", "12", "-t", "0", q)
    llama_base = cli("run", "--driver", "llamacpp", "--max-tokens", "12", "-t", "0", q)
    assert on_llama.returncode == 0 and on_llama.stdout != llama_base.stdout
    assert cli("mod", "rm", "cli-lora").returncode == 0
    gone = cli("run", "--adapter", "cli-lora", q)
    assert gone.returncode == 2 and "unknown adapter 'cli-lora'" in gone.stderr


@pytest.mark.model
def test_json_output_is_the_same_in_both_modes(resident):
    attached = {"LLMOS_HOME": str(resident.home)}
    args = ("run", "--json", "-n", "8", "-t", "0", "Name a planet.")
    local, remote = json.loads(llmos(*args).stdout), json.loads(llmos(*args, env=attached).stdout)
    assert set(local) == set(remote) and set(local["metrics"]) == set(remote["metrics"])
    assert (local["text"], local["usage"], local["status"]) == (remote["text"], remote["usage"], remote["status"])
    def state_free(out: str, home: str):  # what is loaded, and each home's own paths, are state, not shape
        return [{k: v for k, v in r.items() if k != "loaded_on"} for r in json.loads(out.replace(home, "$HOME"))]

    for cmd in (("models", "--json"), ("mod", "ls", "--json"), ("tools", "--json"), ("tasks", "--json")):
        assert state_free(llmos(*cmd).stdout, os.environ["LLMOS_HOME"]) == \
            state_free(llmos(*cmd, env=attached).stdout, str(resident.home)), cmd


@pytest.mark.model
def test_a_run_in_one_terminal_is_seen_and_killed_from_another(resident):
    env = {**os.environ, "NO_COLOR": "1", "LLMOS_HOME": str(resident.home)}
    proc = subprocess.Popen([LLMOS, "run", "--max-tokens", "3000", "-t", "0", "--raw", "Once upon a time"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert len(proc.stdout.read(100)) == 100  # it streams from the resident kernel
        rows = json.loads(llmos("ps", "--json", env=env).stdout)
        [row] = [r for r in rows if r["user"] == "cli" and r["state"] == "running"]
        assert row["owner"] == "owner"  # the socket is the machine owner; "cli" is only a label
        assert row["client"] == f"llmos run pid {proc.pid}"  # which terminal's program it is
        table = llmos("ps", env=env).stdout
        assert row["id"] in table and f"llmos run pid {proc.pid}" in table
        assert json.loads(llmos("--local", "ps", "--json", env=env).stdout) == []  # --local: its own kernel
        killed = llmos("kill", row["id"], env=env)
        assert killed.returncode == 0 and f"killed {row['id']}" in killed.stdout
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1 and "cancelled" in err and "Traceback" not in err
        gone = llmos("kill", row["id"], "--json", env=env)
        assert gone.returncode == 2 and json.loads(gone.stdout)["error"]["code"] == "process_not_found"
    finally:
        proc.kill()
