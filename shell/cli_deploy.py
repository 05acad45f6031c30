"""`llmos mod merge NAME --as MODEL` and `llmos quantize MODEL --type T [--as NAME]`: make a fine-tuned
model servable at full speed (kernel/modules/merge.py, kernel/models/quantize.py), with a progress bar.
Both work on $LLMOS_HOME's files directly (no model is loaded to serve); the resident kernel sees the
new model by name at once."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from llmos.kernel.errors import LlmosError

from .cli_common import STATE, err, fail, out


@contextmanager
def _bar(label: str, quiet: bool) -> Iterator:
    """report(fraction, what) drawing a bar on a terminal, a line per stage elsewhere."""
    bar = Progress(TextColumn(f"[bold]{label}[/] {{task.fields[what]}}"), BarColumn(), TimeElapsedColumn(),
                   console=err, disable=quiet or not err.is_terminal)
    said: set[str] = set()
    with bar:
        task = bar.add_task(label, total=1.0, what="")

        def report(fraction: float, what: str = "") -> None:
            bar.update(task, completed=fraction, what=what)
            if not quiet and not err.is_terminal and what and what not in said:
                said.add(what)
                err.print(f"{label}: {what}")

        yield report


def _stores():
    from llmos.kernel.config import Config
    from llmos.kernel.models.registry import ModelRegistry
    from llmos.kernel.modules.store import ModuleStore

    config = Config.load(STATE["home"])
    registry = ModelRegistry(config.home, config.models)
    return config, registry, ModuleStore(config.home, registry)


def _done(spec, as_json: bool, verb: str) -> None:
    info = dict(spec.options.get("made_from", {}))
    if as_json:
        typer.echo(json.dumps({"model": spec.name, "path": str(spec.path), "bytes": spec.size_bytes, **info}))
    else:
        out.print(f"{verb} [bold]{spec.name}[/] ({spec.size_bytes / 2**20:.0f} MiB): {spec.description}; "
                  f"use it as `--model {spec.name}`")


def merge(name: str = typer.Argument(..., help="The installed module to fold in."),
          as_name: str = typer.Option(..., "--as", help="The new model's name (never an existing one)."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Fold a LoRA/IA3 module into its base model's weights (PEFT's merge) and register it as a model."""
    from llmos.kernel.modules.merge import merge_module

    try:
        config, registry, store = _stores()
        with _bar("merge", as_json) as report:
            spec = merge_module(store, registry, config.home / "cache", name, as_name,
                                progress=lambda what, f: report(f, what))
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    _done(spec, as_json, "made")


def quantize(model: str = typer.Argument(..., help="A GGUF model (a merged one, say)."),
             qtype: str = typer.Option(..., "--type", help="q8_0 | q4_k_m | q4_0"),
             as_name: Optional[str] = typer.Option(None, "--as", help="The new model's name (default MODEL-TYPE)."),
             allow_requantize: bool = typer.Option(False, "--allow-requantize",
                                                   help="Accept an input that is already quantized (worse quality)."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Write a quantized copy of a GGUF model with llama.cpp's quantizer and register it as a model."""
    from llmos.kernel.models.quantize import quantize_model

    try:
        config, registry, _ = _stores()
        with _bar("quantize", as_json) as report:
            spec = quantize_model(registry, model, qtype.lower(), as_name, threads=config.threads,
                                  allow_requantize=allow_requantize, progress=lambda f: report(f, qtype.lower()))
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    _done(spec, as_json, "made")
