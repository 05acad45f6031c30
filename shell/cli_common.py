"""Shared pieces of the `llmos` command line: consoles, error reporting, progress, the kernel a command uses.

`kernel_session` yields the resident kernel's `Client` when one is up for LLMOS_HOME (or LLMOS_URL
names a server), else an in-process kernel booted for this command; `--local` (STATE["local"]) always
boots one. Both have the `KernelAPI` surface, so a command's output is the same either way."""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import llmos
from llmos.kernel.errors import InvalidRequestError, LlmosError

err = Console(stderr=True)
out = Console()

#: options given to the root command (e.g. --home), read by every subcommand
STATE: dict[str, Any] = {"home": None, "local": False}

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
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
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


def attached(as_json: bool):
    """The resident kernel's `Client` (or LLMOS_URL's), or None when this command should boot its own."""
    import os

    from llmos.kernel.errors import DaemonNotRunningError

    if STATE["local"]:
        return None
    url = STATE.get("url") or os.environ.get("LLMOS_URL")
    if url:
        try:
            return llmos.connect(url, STATE.get("api_key"))
        except LlmosError as exc:
            raise fail(exc, as_json) from None
    from pathlib import Path

    from llmos.kernel.config import default_home

    from .daemon import daemon_address

    home = Path(STATE["home"]).expanduser() if STATE["home"] else default_home()
    if daemon_address(home).state != "running":
        return None
    try:
        return llmos.connect(home=home)
    except DaemonNotRunningError:
        return None  # it stopped meanwhile (or hangs): this command runs in process
    except LlmosError as exc:  # another version
        raise fail(exc, as_json) from None


@contextmanager
def kernel_session(as_json: bool, *, attach: bool = True, **overrides) -> Iterator[Any]:
    """The kernel of one command: the resident one when up (with `attach`), else booted here (with a
    progress bar for the model loads of the whole command)."""
    kernel = attached(as_json) if attach and not overrides else None
    with ExitStack() as stack:
        if kernel is None:
            report = stack.enter_context(load_progress())
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
