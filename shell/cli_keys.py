"""`llmos keys`: API keys with identities (tenants), and `llmos tenants`: their usage.

Keys live in $LLMOS_HOME/keys.json, hashed (kernel/tenants/keys.py); these commands change that file
directly (a running server reads it again at its next request), so they need no running kernel, only
the machine owner's access to LLMOS_HOME. A new or rotated key is printed once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .cli_common import STATE, fail, kernel_session, out

keys_app = typer.Typer(help="API keys: each names a tenant with a priority class and limits (docs/tenants.md).",
                       no_args_is_help=True)


def _store():
    from llmos.kernel.config import default_home
    from llmos.kernel.tenants.keys import KeyStore

    return KeyStore(Path(STATE["home"]).expanduser() if STATE["home"] else default_home())


def _show_key(name: str, key: str, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        typer.echo(json.dumps({"name": name, "key": key, **(extra or {})}))
        return
    typer.echo(key)
    typer.echo(f"(the key of tenant {name!r}: shown this once, only its hash is kept)", err=True)


@keys_app.command("add")
def keys_add(
    name: str = typer.Argument(..., help="The tenant's name: a-z, 0-9, '-', '_' (its memfs home is /home/NAME)."),
    priority: str = typer.Option("normal", "--priority", help="Priority class: interactive, normal or batch."),
    tokens_per_minute: Optional[int] = typer.Option(None, "--tokens-per-minute",
                                                    help="Quota of prompt + completion tokens per minute."),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", help="Requests in flight at once."),
    admin: bool = typer.Option(False, "--admin", help="Sees and manages everything (modules, all processes)."),
    read: Optional[List[str]] = typer.Option(None, "--read", help="A memfs directory it may read (repeatable)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Make a tenant and print its new key (once)."""
    from llmos.kernel.errors import LlmosError

    try:
        tenant, key = _store().add(name, priority=priority, tokens_per_minute=tokens_per_minute,
                                   max_concurrency=max_concurrency, admin=admin, shared=tuple(read or ()))
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    _show_key(name, key, as_json, tenant.as_dict())


@keys_app.command("ls")
def keys_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """List tenants with their limits and the start of their key (never the key)."""
    rows = _store().rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("tenant", "key", "priority", "tokens/min", "concurrency", "admin", "reads", "created")
    for r in rows:
        table.add_row(r["name"], r["key"], r["priority"], str(r["tokens_per_minute"] or "-"),
                      str(r["max_concurrency"] or "-"), "yes" if r["admin"] else "", " ".join(r["shared"]) or "-",
                      r["created"])
    out.print(table)


@keys_app.command("rm")
def keys_rm(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Remove a tenant's key: its requests are refused from the next one on."""
    from llmos.kernel.errors import LlmosError

    try:
        _store().remove(name)
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    typer.echo(json.dumps({"removed": name}) if as_json else f"removed {name}")


@keys_app.command("rotate")
def keys_rotate(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Give a tenant a new key; the old one stops working at once."""
    from llmos.kernel.errors import LlmosError

    try:
        key = _store().rotate(name)
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    _show_key(name, key, as_json)


def tenants(as_json: bool = typer.Option(False, "--json")) -> None:
    """Per tenant: limits, tokens in/out, requests, queued and running now, throttled and denied."""
    with kernel_session(as_json) as kernel:
        rows = kernel.tenants_info()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("tenant", "priority", "tokens in", "tokens out", "requests", "queued", "running", "throttled",
                  "denied", "tokens/min")
    for r in rows:
        table.add_row(r["tenant"], r.get("priority") or "-", str(r["prompt_tokens"]), str(r["completion_tokens"]),
                      str(r["requests"]), str(r["queued"]), str(r["running"]), str(r["throttled"]), str(r["denied"]),
                      str(r.get("tokens_per_minute") or "-"))
    out.print(table)
