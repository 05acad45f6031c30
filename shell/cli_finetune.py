"""`llmos finetune`: train a PEFT adapter into a module, with a live progress bar.

Runs in the foreground so Ctrl-C saves a resumable checkpoint. Under `torchrun --nproc-per-node N`
each process runs this command; the first one reports progress and installs the module.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmos.kernel.errors import LlmosError

from .cli_common import EXIT_INTERRUPTED, STATE, err, fail, kernel_session, out


def finetune(
    data: str = typer.Option(..., "--data", help="JSONL: {\"messages\": [...]} or {\"prompt\", \"completion\"} rows."),
    out_name: str = typer.Option(..., "--out", help="Name of the module to create."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: the default model)."),
    method: str = typer.Option("lora", "--method", help="lora | adalora | ia3 | prefix"),
    rank: int = typer.Option(8, "--rank", help="Adapter rank (virtual tokens for prefix)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (default: chosen from its "
                                                                  "size, at least ~40 steps, at most 10 epochs)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: chosen from the data size and "
                                                          "method, e.g. 2e-3 for LoRA on up to 1,000 rows)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps."),
    eval_file: Optional[str] = typer.Option(None, "--eval", help="JSONL for eval loss (per epoch and at the end)."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint an interrupt saved."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every",
                                                   help="Also save a resumable checkpoint every N steps."),
    check: bool = typer.Option(True, "--check/--no-check", help="Afterwards ask the module (and its base) the data's "
                                                                "questions, and say whether the run converged."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fine-tune a PEFT adapter on the torch model and install it as a module."""
    from llmos.plugins.finetune.trainer import FinetuneInterrupted, FinetuneOptions, run_finetune

    try:
        from llmos.kernel.config import Config

        config = Config.load(STATE["home"])
        opts = FinetuneOptions(model=model or config.default_model, data=data, out=out_name, method=method,
                               rank=rank, epochs=epochs, lr=lr, batch_size=batch_size, max_steps=max_steps,
                               eval=eval_file, seed=seed, resume=resume, checkpoint_every=checkpoint_every)
        opts.validate()
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    bar = Progress(TextColumn("[bold]finetune[/] {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}  {task.fields[tps]:.0f} tok/s"), TimeRemainingColumn(),
                   console=err, disable=as_json or not err.is_terminal)

    def report(event: dict) -> None:
        kind = event["event"]
        if kind == "data":
            for problem in event["errors"]:
                err.print(f"[yellow]skipped[/] {problem}")
        elif kind == "plan" and not as_json:
            err.print(event["text"])
        elif kind == "step":
            if not bar.tasks:
                bar.add_task("train", total=event["total"], name=out_name, loss=event["loss"], tps=0.0)
            bar.update(bar.tasks[0].id, completed=event["step"], loss=event["loss"], tps=event["tokens_per_s"])
            if not err.is_terminal and not as_json and event["step"] % 10 == 0:
                err.print(f"step {event['step']}/{event['total']} loss {event['loss']:.3f}")
        elif kind == "eval" and not as_json:
            label = "base model" if event.get("base") else f"step {event['step']}"
            err.print(f"eval loss ({label}): {event['loss']:.4f}")
        elif kind == "checkpoint":
            err.print(f"[yellow]checkpoint saved at step {event['step']}[/]")

    try:
        with bar:
            result = run_finetune(config, opts, progress=report)
    except FinetuneInterrupted as exc:
        err.print(f"[yellow]{exc}[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    if result.module is None:  # a non-main DDP rank
        return
    if check:
        from llmos.plugins.finetune.review import review

        if not as_json:
            err.print("asking the module the data's questions...")
        with kernel_session(as_json) as kernel:
            result = review(kernel, opts, result)
    verdict = result.review["verdict"] if result.review else result.verdict
    summary = {"module": result.module.name, "steps": result.steps, "train_loss": result.train_loss,
               "eval_loss": result.eval_loss, "base_eval_loss": result.base_eval_loss,
               "lr": result.plan.lr, "epochs": result.plan.epochs, "data_errors": result.data_errors,
               "review": result.review, "converged": verdict is None, "verdict": verdict}
    if as_json:
        typer.echo(json.dumps(summary))
        return
    out.print(f"installed module [bold]{result.module.name}[/]: eval loss {result.eval_loss:.4f} "
              f"(base {result.base_eval_loss:.4f}) after {result.steps} steps")
    if result.review and result.review["rows"]:
        r = result.review
        out.print(f"answers {r['module']:.0%} of {r['rows']} rows' questions (the base model: {r['base']:.0%})")
    if verdict:
        err.print(f"[bold yellow]warning:[/] {escape(verdict)}")
