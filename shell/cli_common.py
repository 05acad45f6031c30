"""Shared pieces of the `llmos` command line: consoles, error reporting, progress, kernel boot."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import llmos
from llmos.kernel.errors import InvalidRequestError, LlmosError

err = Console(stderr=True)
out = Console()

#: options given to the root command (e.g. --home), read by every subcommand
STATE: dict[str, Optional[str]] = {"home": None}

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def fail(exc: LlmosError, as_json: bool) -> "typer.Exit":
    code = EXIT_BAD_INPUT if isinstance(exc, (InvalidRequestError, LookupError)) or exc.code in (
        "invalid_model_file", "invalid_config", "queue_full") else EXIT_FAILURE
    if as_json:
        body = {"error": {"code": exc.code, "message": str(exc), "param": getattr(exc, "param", None)}}
        typer.echo(json.dumps(body))
    else:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def load_progress() -> Iterator:
    """A progress bar for model loads on a terminal; silent when stderr is not a terminal."""
    if not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("loading [bold]{task.fields[model]}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        tasks: dict[str, int] = {}

        def report(model: str, fraction: float) -> None:
            if model not in tasks:
                tasks[model] = progress.add_task("load", total=1.0, model=model)
            progress.update(tasks[model], completed=fraction)

        yield report


@contextmanager
def kernel_session(as_json: bool, **overrides) -> Iterator[llmos.Kernel]:
    with load_progress() as report:
        try:
            kernel = llmos.boot(home=STATE["home"], progress=report, **overrides)
        except LlmosError as exc:
            raise fail(exc, as_json) from None
        try:
            yield kernel
        except LlmosError as exc:
            raise fail(exc, as_json) from None
        finally:
            kernel.shutdown()



