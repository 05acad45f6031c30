"""The fine-tuning loop: PEFT on the torch model, driven by accelerate (so the same code runs in one
process or under `torchrun --nproc-per-node N` / `accelerate launch` with DDP; gloo on CPU).

1. load and encode the data (bad rows reported with line numbers);
2. build the PEFT model on the base model's Hugging Face weights (a GGUF is dequantized once);
3. measure the base model's eval loss, train, measure eval loss (per epoch with --eval);
4. on interrupt (Ctrl-C or job.cancel) save a resumable checkpoint; --resume continues from it;
5. save the adapter and install it as a module whose manifest records base identity, method, rank,
   data hash and losses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from llmos.kernel.lib.atomic import atomic_write_text, fsync_dir, fsync_file
from llmos.kernel.config import Config
from llmos.kernel.errors import InvalidRequestError, LlmosError
from llmos.kernel.modules.store import Manifest, ModuleStore, check_name
from llmos.kernel.models.registry import ModelRegistry

from .data import IGNORE, encode, load_jsonl
from .methods import METHODS, peft_config
from .schedule import Plan, convergence, plan

#: progress callback: a dict with event ("data", "step", "eval", "checkpoint", "done") and figures
Progress = Callable[[dict[str, Any]], None]


class FinetuneInterrupted(LlmosError):
    """Training stopped early; a checkpoint was saved and `--resume` continues from it."""

    code = "interrupted"


@dataclass(frozen=True)
class FinetuneOptions:
    model: str
    data: str
    out: str
    method: str = "lora"
    rank: int = 8
    epochs: float | None = None  # None: chosen from the data size (schedule.py)
    lr: float | None = None  # None: chosen from the data size and method
    batch_size: int = 8
    max_steps: int | None = None
    eval: str | None = None
    seed: int = 0
    resume: bool = False
    max_len: int = 512
    #: also save a resumable checkpoint every N steps (None: only when interrupted)
    checkpoint_every: int | None = None

    def validate(self) -> None:
        check_name(self.out, param="out")  # it names $LLMOS_HOME/finetune/OUT and the module: never a path
        if self.method not in METHODS:
            raise InvalidRequestError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}", param="method")
        for name, lo in (("rank", 1), ("batch_size", 1), ("max_len", 8)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < lo:
                raise InvalidRequestError(f"{name} must be an integer >= {lo}", param=name)
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise InvalidRequestError("checkpoint_every must be >= 1", param="checkpoint_every")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidRequestError("max_steps must be >= 1", param="max_steps")
        if self.epochs is not None and not self.epochs > 0:
            raise InvalidRequestError("epochs must be > 0", param="epochs")
        if self.lr is not None and not 0 < self.lr < 1:
            raise InvalidRequestError("lr must be between 0 and 1", param="lr")


@dataclass(frozen=True)
class FinetuneResult:
    module: Manifest | None  # None on non-main DDP ranks
    steps: int
    train_loss: float
    eval_loss: float
    base_eval_loss: float
    data_errors: list[str]
    plan: Plan | None = None
    epoch_losses: tuple[float, ...] = ()  # mean train loss of each epoch run here
    #: the module and its base asked the data's questions after the run (review.py), and the verdict
    review: dict[str, Any] | None = None

    @property
    def verdict(self) -> str | None:
        """None when the run looks converged, else what is wrong and the flags to try (schedule.py)."""
        return self.verdict_with()

    def verdict_with(self, accuracy: tuple[int, int] | None = None) -> str | None:
        """`verdict`, also judging how many checked rows the module answers (`accuracy`: right, asked)."""
        if self.plan is None:
            return None
        return convergence(self.plan, self.eval_loss, self.base_eval_loss, list(self.epoch_losses), accuracy)


class _Batches:
    """Right-padded batches of encoded examples."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[tuple[list[int], list[int]]]):
        import torch

        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad_id)
        labels = torch.full((len(rows), width), IGNORE)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def run_finetune(config: Config, opts: FinetuneOptions, *, progress: Progress = lambda _e: None,
                 stop: threading.Event | None = None) -> FinetuneResult:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos.drivers.torch_loading import hf_model_dir

    opts.validate()
    stop = stop or threading.Event()
    registry = ModelRegistry(config.home, config.models)
    store = ModuleStore(config.home, registry)
    spec = registry.resolve(opts.model)
    train = load_jsonl(opts.data)
    evalset = load_jsonl(opts.eval, param="eval") if opts.eval else None
    errors = [str(e) for e in train.errors] + [f"eval {e}" for e in (evalset.errors if evalset else [])]

    # 1. Process group (torchrun/accelerate env) and data.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    emit = progress if main else (lambda _e: None)
    ckpt = config.home / "finetune" / opts.out / "checkpoint"
    if main:
        _recover_checkpoint(ckpt)
    accelerator.wait_for_everyone()
    emit({"event": "data", "examples": len(train.examples), "errors": errors,
          "processes": accelerator.num_processes})
    set_seed(opts.seed)
    with accelerator.main_process_first():
        source = hf_model_dir(spec, config.home / "cache")
    tokenizer = AutoTokenizer.from_pretrained(source)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = lambda rows: [encode(r, tokenizer, system_prompt=config.system_prompt, max_len=opts.max_len)  # noqa: E731
                        for r in rows]
    train_rows = enc(train.examples)
    eval_rows = enc(evalset.examples) if evalset else train_rows
    collate = _Batches(pad_id)
    gen = torch.Generator().manual_seed(opts.seed)
    train_loader = DataLoader(train_rows, batch_size=opts.batch_size, shuffle=True, collate_fn=collate, generator=gen)
    eval_loader = DataLoader(eval_rows, batch_size=opts.batch_size, collate_fn=collate)
    per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)
    schedule = plan(opts.method, len(train_rows), opts.batch_size, accelerator.num_processes, lr=opts.lr,
                    epochs=opts.epochs, max_steps=opts.max_steps)
    total = schedule.steps
    emit({"event": "plan", "lr": schedule.lr, "epochs": schedule.epochs, "steps": total,
          "chosen": list(schedule.chosen), "text": schedule.describe(len(train_rows))})

    # 2. The PEFT model.
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = get_peft_model(model, peft_config(opts.method, opts.rank, total))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=schedule.lr)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    step = 0
    if opts.resume:
        if not _complete(ckpt):
            raise InvalidRequestError(f"no checkpoint to resume for {opts.out} (looked in {ckpt})", param="resume")
        accelerator.load_state(str(ckpt / "state"))
        step = json.loads((ckpt / "progress.json").read_text())["step"]
        emit({"event": "resume", "step": step})

    def evaluate() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for batch in eval_loader:
                losses.append(accelerator.gather_for_metrics(model(**batch).loss.detach().reshape(1)))
        model.train()
        return float(torch.cat(losses).mean())

    with _adapter_disabled(accelerator.unwrap_model(model)):
        base_eval = evaluate()
    emit({"event": "eval", "step": step, "loss": base_eval, "base": True})

    # 3. Train.
    model.train()
    started, tokens, loss_sum, loss_n, eval_loss = time.monotonic(), 0, 0.0, 0, base_eval
    by_epoch: dict[int, list[float]] = {}
    try:
        while step < total:
            epoch, skip = divmod(step, per_epoch)
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            train_loader.set_epoch(epoch) if hasattr(train_loader, "set_epoch") else None
            for batch in loader:
                if stop.is_set():
                    raise KeyboardInterrupt
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                if opts.method == "adalora":
                    accelerator.unwrap_model(model).base_model.update_and_allocate(step)
                optimizer.zero_grad()
                step += 1
                tokens += int(batch["attention_mask"].sum()) * accelerator.num_processes
                loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
                by_epoch.setdefault(epoch, []).append(float(loss.detach()))
                elapsed = time.monotonic() - started
                emit({"event": "step", "step": step, "total": total, "loss": float(loss.detach()),
                      "tokens_per_s": tokens / elapsed if elapsed else 0.0,
                      "eta_s": elapsed / step * (total - step) if step else None})
                if step >= total:
                    break
                if opts.checkpoint_every and step % opts.checkpoint_every == 0:
                    _save_checkpoint(accelerator, ckpt, step)
                    emit({"event": "checkpoint", "step": step, "path": str(ckpt)})
            if opts.eval and step < total:
                eval_loss = evaluate()
                emit({"event": "eval", "step": step, "loss": eval_loss, "epoch": epoch + 1})
    except KeyboardInterrupt:
        _save_checkpoint(accelerator, ckpt, step)
        emit({"event": "checkpoint", "step": step, "path": str(ckpt)})
        raise FinetuneInterrupted(f"interrupted at step {step}/{total}: checkpoint saved, continue with --resume") from None

    # 4. Final eval, then save and install the adapter (main process only).
    eval_loss = evaluate()
    emit({"event": "eval", "step": step, "loss": eval_loss, "final": True})
    manifest = None
    accelerator.wait_for_everyone()
    if main:
        manifest = _install(accelerator.unwrap_model(model), store, opts, spec.name, {
            "data_sha256": train.sha256, "eval_loss": eval_loss, "base_eval_loss": base_eval,
            "train_loss": loss_sum / max(loss_n, 1), "steps": step, "processes": accelerator.num_processes,
            "lr": schedule.lr, "epochs": schedule.epochs})
        shutil.rmtree(ckpt.parent, ignore_errors=True)
        emit({"event": "done", "module": manifest.name, "eval_loss": eval_loss})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    epoch_losses = tuple(sum(v) / len(v) for _, v in sorted(by_epoch.items()))
    return FinetuneResult(manifest, step, loss_sum / max(loss_n, 1), eval_loss, base_eval, errors, schedule,
                          epoch_losses)


class _adapter_disabled:
    """Context manager: run the PEFT model with its adapter off (prefix tuning has no such switch)."""

    def __init__(self, model) -> None:
        self.ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx is not None else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx is not None else False


def _complete(directory: Path) -> bool:
    """A checkpoint directory is complete once it holds progress.json (written last, fsynced)."""
    return (directory / "progress.json").exists()


def _recover_checkpoint(ckpt: Path) -> None:
    """At the start of a run (main process): remove the temporary directories of saves cut short (never
    read) and finish a swap a crash interrupted (`_repair_swap`)."""
    for stale in ckpt.parent.glob(".checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    _repair_swap(ckpt)


def _repair_swap(ckpt: Path) -> None:
    """A save swaps in a new checkpoint with two renames (checkpoint -> checkpoint.old, new ->
    checkpoint), then deletes checkpoint.old. After a crash in between: with a complete `checkpoint`,
    checkpoint.old is a leftover (deleted); without one, checkpoint.old is the newest complete
    checkpoint and becomes `checkpoint` again. Either way the next save and --resume work."""
    old = ckpt.with_name("checkpoint.old")
    if not old.exists():
        return
    if _complete(ckpt):
        shutil.rmtree(old)
    elif _complete(old):
        if ckpt.exists():
            shutil.rmtree(ckpt)
        os.replace(old, ckpt)
    else:
        shutil.rmtree(old)
    fsync_dir(ckpt.parent)


def _save_checkpoint(accelerator, ckpt: Path, step: int) -> None:
    """Atomically replace the checkpoint: a crash at any point leaves one complete checkpoint (the new
    or the previous one) that the next save or --resume finds."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=ckpt.parent))
    accelerator.save_state(str(tmp / "state"))
    if accelerator.is_main_process:
        for f in (tmp / "state").rglob("*"):
            if f.is_file():
                fsync_file(f)
        atomic_write_text(tmp / "progress.json", json.dumps({"step": step}))  # last: marks it complete
        _repair_swap(ckpt)
        old = ckpt.with_name("checkpoint.old")
        if ckpt.exists():
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        fsync_dir(ckpt.parent)
        shutil.rmtree(old, ignore_errors=True)


def _install(model, store: ModuleStore, opts: FinetuneOptions, base: str, extra: dict[str, Any]) -> Manifest:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg_file = Path(tmp) / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["base_model_name_or_path"] = base
        cfg_file.write_text(json.dumps(cfg, indent=2))
        manifest = store.install(tmp, name=opts.out, base=base, replace=True)
    updated = Manifest(**{**manifest.as_dict(), "source": f"llmos finetune {opts.data}",
                          "extra": {**extra, "options": asdict(opts)}})
    store.write_manifest(store.root / opts.out, updated)
    return updated
