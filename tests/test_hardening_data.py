"""Data safety (issue 14): what `mem import` takes in, a corrupt mounts.json, durable atomic writes,
module names, fine-tune --out checked first, and checkpoint saves that survive a crash anywhere."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from llmos.kernel.config import Config
from llmos.kernel.memfs import MemFS
from llmos.kernel.modules.store import Manifest, ModuleNameError, ModuleStore
from llmos.kernel.models.registry import ModelRegistry
from llmos.plugins.finetune import trainer

from .test_finetune import write_jsonl
from .test_modules import make_peft_dir
from .util import run_llmos


class Crash(Exception):
    """Stands for the process dying at this point."""


# -- mem import ---------------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path) -> Path:
    """A directory to import, with a secret outside it reachable through symlinks."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOPSECRET hunter2")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.md").write_text("Alpha: notes about gardening.")
    (src / "sub" / "b.txt").write_text("Beta: notes about cooking.")
    (src / ".env").write_text("API_KEY=sk-live-123")
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("[auth] token=ghp_abc")
    (src / "big.txt").write_text("x" * 2000)
    (src / "bad.txt").write_bytes(b"\xff\xfe not UTF-8")
    (src / "image.png").write_bytes(b"\x89PNG\x00")
    (src / "out.txt").symlink_to(outside / "secret.txt")
    (src / "outdir").symlink_to(outside)
    (src / "in.txt").symlink_to(src / "a.md")
    (src / "loop").symlink_to(src)
    return src


@pytest.fixture(scope="module")
def mem(tmp_path_factory):
    fs = MemFS(tmp_path_factory.mktemp("memfs"), import_max_bytes=1000)  # as mem_import_max_bytes sets it
    yield fs
    fs.close()


def _files(mem, directory):
    return {e["path"] for e in mem.ls(directory, recursive=True) if e["type"] == "file"}


def test_import_stays_in_the_tree_skips_hidden_and_large_files_and_reports_each(mem, tree):
    report = mem.import_dir(tree, "/imp")
    assert _files(mem, "/imp") == {"/imp/a.md", "/imp/in.txt", "/imp/sub/b.txt"} and report["imported"] == 3
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"out.txt", "outdir", ".env", ".git", "big.txt", "bad.txt", "image.png", "loop"}
    assert "outside" in reasons["out.txt"] and "outside" in reasons["outdir"]
    assert "hidden" in reasons[".env"] and "--hidden" in reasons[".git"]
    assert reasons["big.txt"] == "2000 bytes, over the import limit of 1000 bytes (--max-bytes)"
    assert "not UTF-8" in reasons["bad.txt"] and "not a text file" in reasons["image.png"]
    assert "not followed" in reasons["loop"]
    assert mem.grep("TOPSECRET|API_KEY|token=", within="/imp") == []


def test_hidden_files_come_in_with_hidden_and_the_size_cap_is_per_call(mem, tree):
    report = mem.import_dir(tree, "/all", hidden=True, max_bytes=5000)
    assert _files(mem, "/all") == {"/all/a.md", "/all/in.txt", "/all/sub/b.txt", "/all/.env", "/all/.git/config",
                                   "/all/big.txt"}
    assert report["imported"] == 6 and "outside" in {Path(s["path"]).name: s["reason"]
                                                     for s in report["skipped"]}["out.txt"]


def test_the_import_size_cap_is_a_config_key(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmos.toml").write_text("[kernel]\nmem_import_max_bytes = 1234\n")
    assert Config.load(home).mem_import_max_bytes == 1234
    assert Config.load(tmp_path).mem_import_max_bytes == 10 * 1024 * 1024


@pytest.mark.cli
def test_cli_import_prints_what_it_skipped_and_takes_hidden_and_max_bytes(tmp_path, tree):
    env = {"LLMOS_HOME": str(tmp_path / "home"), "LLMOS_MEM_IMPORT_MAX_BYTES": "1000"}
    r = run_llmos("mem", "import", str(tree), "--to", "/a", env=env)
    assert r.returncode == 0, r.stderr
    assert "imported 3 file(s) into /a, skipped 8" in r.stdout
    assert f"skipped {tree / '.env'}: hidden" in r.stderr
    assert f"skipped {tree / 'big.txt'}: 2000 bytes, over the import limit of 1000 bytes" in r.stderr
    assert f"skipped {tree / 'out.txt'}: symlink to " in r.stderr
    r = run_llmos("mem", "import", str(tree), "--to", "/b", "--hidden", "--max-bytes", "5000", "--json", env=env)
    report = json.loads(r.stdout)
    assert report["imported"] == 6
    assert {Path(s["path"]).name for s in report["skipped"]} == {"out.txt", "outdir", "bad.txt", "image.png", "loop"}


# -- mounts.json --------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b'{"project": "/proj', b"[]", b"\xff\xfe",
                                     json.dumps({"x": "/etc"}).encode()])
def test_a_corrupt_mounts_json_is_set_aside_and_rebuilt_from_the_volumes(tmp_path, content, caplog):
    root = tmp_path / "memfs"
    fs = MemFS(root)
    fs.mount("project")
    fs.mount("notes")
    (root / "mounts.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, "llmos.memfs"):
        assert fs.mounts() == {"root": "/", "notes": "/notes", "project": "/project"}
    assert "set aside as mounts.json.corrupt-" in caplog.text
    [aside] = root.glob("mounts.json.corrupt-*")
    assert aside.read_bytes() == content
    assert json.loads((root / "mounts.json").read_text()) == {"notes": "/notes", "project": "/project"}


@pytest.mark.cli
def test_memfs_keeps_working_when_mounts_json_is_torn_and_fsck_reports_it(tmp_path):
    env = {"LLMOS_HOME": str(tmp_path / "home")}
    assert run_llmos("mem", "mount", "project", env=env).returncode == 0
    assert run_llmos("mem", "write", "/project/plan.md", stdin="Ship on Friday.", env=env).returncode == 0
    (tmp_path / "home" / "memfs" / "mounts.json").write_text('{"project": "/pro')  # a torn write
    r = run_llmos("mem", "cat", "/project/plan.md", env=env)
    assert r.returncode == 0 and r.stdout == "Ship on Friday.", r.stderr
    r = run_llmos("mem", "fsck", env=env)
    assert r.returncode == 0 and "set aside as mounts.json.corrupt-" in r.stdout, r.stdout + r.stderr


# -- durable atomic writes ----------------------------------------------------------------------------

def _record_syncs(monkeypatch) -> list[tuple[str, str]]:
    """Record fsync (of a file or a directory) and rename calls, in order."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        return fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", Path(dst).name))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events


def test_mounts_json_and_manifests_are_fsynced_then_renamed_then_the_directory_fsynced(tmp_path, monkeypatch):
    fs = MemFS(tmp_path / "memfs")
    manifest = Manifest(name="m", base_model="smollm2", base_identity="x", formats=["peft"], method="lora", rank=4,
                        alpha=8, size_bytes=1, created=0.0, source="test")
    (tmp_path / "m").mkdir()
    events = _record_syncs(monkeypatch)
    fs.mount("project")
    assert events == [("fsync", "file"), ("replace", "mounts.json"), ("fsync", "dir")]
    events.clear()
    ModuleStore.write_manifest(tmp_path / "m", manifest)
    assert events == [("fsync", "file"), ("replace", "manifest.json"), ("fsync", "dir")]
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["name"] == "m"


def test_a_failed_mount_table_write_keeps_the_old_table_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    fs = MemFS(tmp_path / "memfs")
    fs.mount("project")
    before = (tmp_path / "memfs" / "mounts.json").read_bytes()

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        fs.mount("notes")
    assert (tmp_path / "memfs" / "mounts.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "memfs").iterdir() if p.is_file()) == ["mounts.json"]


# -- names --------------------------------------------------------------------------------------------

BAD_NAMES = ["x\n", "good\n", "a/b", "..", "/abs/path", ".hidden", "-x", "a" * 65, "a b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_module_name_must_be_a_whole_valid_name(tmp_path, name):
    store = ModuleStore(tmp_path / "home", ModelRegistry(tmp_path / "home"))
    with pytest.raises(ModuleNameError, match="letters, digits"):
        store.install(make_peft_dir(tmp_path / "a"), name=name, base="smollm2")
    assert not (tmp_path / "home" / "modules").exists() or store.names() == []
    assert store.install(make_peft_dir(tmp_path / "a"), name="good.name-1", base="smollm2").name == "good.name-1"


@pytest.mark.parametrize("name", ["x\n", "a b", "a/b"])
def test_tool_and_task_names_must_be_whole_valid_names(name):
    from llmos.kernel.tools.tools import Task, Tool

    def fn(text: str) -> str:
        return text

    with pytest.raises(ValueError, match="letters, digits"):
        Tool.from_function(fn, name=name, capabilities=(), plugin="t")
    with pytest.raises(ValueError, match="letters, digits"):
        Task.from_function(name, lambda kernel, text="": text, description=None, plugin="t")


# -- fine-tune --out ----------------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["/abs/elsewhere", "../escape", "x\n", "a/b"])
def test_finetune_out_is_checked_before_anything_is_read_or_deleted(tmp_path, out):
    from llmos.plugins.finetune.trainer import FinetuneOptions, run_finetune

    outside = tmp_path / "outside" / "checkpoint"
    outside.mkdir(parents=True)
    (outside / "progress.json").write_text('{"step": 1}')
    (tmp_path / "outside" / ".checkpoint-x").mkdir()
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    out = str(tmp_path / "outside") if out == "/abs/elsewhere" else out
    opts = FinetuneOptions(model="smollm2", data=str(data), out=out, resume=True, max_steps=1)
    with pytest.raises(ModuleNameError, match="is invalid: use 1-64 letters") as info:
        run_finetune(Config.load(tmp_path / "home"), opts)
    assert info.value.param == "out"
    assert (outside / "progress.json").exists() and (tmp_path / "outside" / ".checkpoint-x").exists()
    assert not (tmp_path / "home" / "finetune").exists()


@pytest.mark.cli
def test_cli_finetune_refuses_a_path_as_out_with_exit_2(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    r = run_llmos("finetune", "--data", str(data), "--out", str(tmp_path), "--resume", timeout=120)
    assert r.returncode == 2 and "module name" in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- checkpoint swap ----------------------------------------------------------------------------------

@pytest.fixture
def tiny():
    """A real accelerate training state around a one-layer model (what a checkpoint saves and loads)."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model


def _set(model, value: float) -> None:
    import torch

    with torch.no_grad():
        model.weight.fill_(value)


def _step(ckpt: Path) -> int:
    return json.loads((ckpt / "progress.json").read_text())["step"]


def _left(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.parent.iterdir())


def _saved_once_then_changed(tmp_path: Path, tiny):
    """A checkpoint saved at step 1 (weight 1.0), then the model changed (weight 2.0) for the next save."""
    accelerator, model = tiny
    ckpt = tmp_path / "finetune" / "m" / "checkpoint"
    _set(model, 1.0)
    trainer._save_checkpoint(accelerator, ckpt, 1)
    _set(model, 2.0)
    return accelerator, model, ckpt


def test_a_crash_between_the_two_renames_of_a_save_is_recovered(tmp_path, tiny, monkeypatch):
    accelerator, model, ckpt = _saved_once_then_changed(tmp_path, tiny)
    with monkeypatch.context() as patch:
        replace = os.replace

        def second_rename_crashes(src, dst):
            if Path(dst).name == "checkpoint" and Path(src).name.startswith(".checkpoint-"):
                raise Crash
            return replace(src, dst)

        patch.setattr(os, "replace", second_rename_crashes)
        with pytest.raises(Crash):
            trainer._save_checkpoint(accelerator, ckpt, 2)
    assert not ckpt.exists() and _step(ckpt.with_name("checkpoint.old")) == 1  # what the crash left
    trainer._recover_checkpoint(ckpt)  # what a run (and --resume) does first
    assert _left(ckpt) == ["checkpoint"] and _step(ckpt) == 1
    accelerator.load_state(str(ckpt / "state"))
    assert float(model.weight.detach()[0, 0]) == 1.0
    _set(model, 3.0)
    trainer._save_checkpoint(accelerator, ckpt, 3)
    assert _left(ckpt) == ["checkpoint"] and _step(ckpt) == 3


@pytest.mark.parametrize("partly_deleted", [False, True])
def test_a_crash_while_the_previous_checkpoint_is_deleted_breaks_no_later_save(tmp_path, tiny, monkeypatch,
                                                                               partly_deleted):
    accelerator, model, ckpt = _saved_once_then_changed(tmp_path, tiny)
    with monkeypatch.context() as patch:
        def deletion_crashes(path, *args, **kwargs):
            if Path(path).name == "checkpoint.old":
                if partly_deleted:
                    (Path(path) / "progress.json").unlink()
                raise Crash
            return rmtree(path, *args, **kwargs)

        rmtree = shutil.rmtree
        patch.setattr(shutil, "rmtree", deletion_crashes)
        with pytest.raises(Crash):
            trainer._save_checkpoint(accelerator, ckpt, 2)
    assert _left(ckpt) == ["checkpoint", "checkpoint.old"] and _step(ckpt) == 2  # what the crash left
    _set(model, 3.0)
    trainer._save_checkpoint(accelerator, ckpt, 3)  # failed before: os.replace onto a non-empty checkpoint.old
    assert _left(ckpt) == ["checkpoint"] and _step(ckpt) == 3
    _set(model, 0.0)
    trainer._recover_checkpoint(ckpt)
    accelerator.load_state(str(ckpt / "state"))
    assert float(model.weight.detach()[0, 0]) == 3.0


@pytest.mark.model
def test_finetune_resumes_after_a_crash_between_the_renames_of_a_save(kernel, tmp_path, monkeypatch, llmos_home):
    from .test_finetune import ANSWERS, QUESTIONS

    train = write_jsonl(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": q},
                                                             {"role": "assistant", "content": ANSWERS[0]}]}
                                               for q in QUESTIONS[:8]])
    work = llmos_home / "finetune" / "swap"
    args = {"data": str(train), "out": "swap", "max_steps": 3, "batch_size": 4, "checkpoint_every": 1}
    with monkeypatch.context() as patch:
        replace = os.replace

        def second_rename_of_step_2_crashes(src, dst):
            if Path(dst).name == "checkpoint" and (work / "checkpoint.old").exists():
                raise Crash
            return replace(src, dst)

        patch.setattr(os, "replace", second_rename_of_step_2_crashes)
        with pytest.raises(Exception, match="Crash"):
            kernel.finetune(**args, check=False).wait(600)
    assert not (work / "checkpoint").exists() and _step(work / "checkpoint.old") == 1
    job = kernel.finetune(**args, resume=True, check=False)
    result = job.wait(600)
    assert [e["step"] for e in job.events if e["event"] == "resume"] == [1] and result.steps == 3
    assert not work.exists() and kernel.module_store.get("swap").extra["steps"] == 3
