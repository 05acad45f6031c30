"""`llmos mod ...`: install, list, remove and export adapter modules (kernel/modules/store.py); `mod merge`
folds one into its base model (cli_deploy.py)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from llmos.kernel.errors import InvalidRequestError

from .cli_common import fail, kernel_session, out

mod_app = typer.Typer(help="Adapter modules: install, list, remove, export, merge.", no_args_is_help=True)


@mod_app.command("install")
def install(
    path: str = typer.Argument(..., help="A PEFT adapter directory or a GGUF LoRA file."),
    name: Optional[str] = typer.Option(None, "--name", help="Module name (default: the file or directory name)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model, when the adapter names no known model."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify an adapter and copy it into $LLMOS_HOME/modules/."""
    with kernel_session(as_json) as kernel:
        manifest = kernel.install_module(path, name=name, base=base)
    if as_json:
        typer.echo(json.dumps(manifest.as_dict()))
    else:
        out.print(f"installed module [bold]{manifest.name}[/] ({'/'.join(manifest.formats)} "
                  f"{manifest.method}, rank {manifest.rank}) for {manifest.base_model}")


@mod_app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """List installed modules and where they are loaded."""
    with kernel_session(as_json) as kernel:
        rows = kernel.modules_info()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "base model", "forms", "method", "rank", "size", "loaded")
    for r in rows:
        loaded = ", ".join(f"{x['driver']} ({x['use_count']} users)" for x in r["loaded"]) or "-"
        table.add_row(r["name"], r["base_model"], "/".join(r["formats"]), r["method"], str(r["rank"]),
                      f"{r['size_bytes'] / 1e6:.1f} MB", loaded)
    out.print(table)


@mod_app.command("rm")
def rm(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Remove an installed module from disk."""
    with kernel_session(as_json) as kernel:
        kernel.module_store.remove(name)
    typer.echo(json.dumps({"removed": name}) if as_json else f"removed module {name}")


@mod_app.command("export")
def export(
    name: str,
    gguf: bool = typer.Option(False, "--gguf", help="Add a GGUF LoRA form (for the llama.cpp driver)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export a PEFT module to another form, installed under the same name."""
    if not gguf:
        raise fail(InvalidRequestError("choose a format to export to: --gguf", param="format"), as_json)
    with kernel_session(as_json) as kernel:
        manifest = kernel.export_module(name, "gguf")
    typer.echo(json.dumps(manifest.as_dict()) if as_json else f"module {name} now has forms {manifest.formats}")

