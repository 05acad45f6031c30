"""`llmos ps` / `llmos kill`: the processes (requests, agents, embedding jobs) of the kernel commands use:
the resident one when it is up, a server named by `--url` / LLMOS_URL, else an in-process kernel
(which has none but what it runs itself)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from .cli_common import STATE, kernel_session, out

URL = typer.Option(None, "--url", help="A server to ask instead of the resident kernel (LLMOS_URL).")
KEY = typer.Option(None, "--api-key", envvar="LLMOS_API_KEY", help="Its API key.")


def _target(url: Optional[str], api_key: Optional[str]) -> None:
    if url:
        STATE["url"], STATE["api_key"] = url, api_key


def ps(url: Optional[str] = URL, api_key: Optional[str] = KEY, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the requests, agents and embedding jobs of the kernel, most urgent first."""
    _target(url, api_key)
    with kernel_session(as_json) as kernel:
        rows = kernel.ps()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "client", "tenant", "user", "model", "driver", "state", "priority", "tokens", "age", "tok/s")
    for r in rows:
        tps = r.get("tokens_per_s")
        table.add_row(r["id"], r.get("client") or "-", r["owner"], r.get("user") or "-", r["model"], r["driver"],
                      _state(r), r["priority"], str(r.get("output_tokens") or ""), f"{r['age_s']:.1f}s",
                      f"{tps:.1f}" if tps else "")
    out.print(table)


def _state(row: dict) -> str:
    """`waiting #3 ~4s`: a queued request's place in line and when it should start; `preempted #1 (KV
    swapped, 46 MiB in ram)`: a preempted request whose KV waits in the swap area."""
    state = row["state"]
    if row.get("position") is not None:
        eta = row.get("eta_s")
        state = f"{state} #{row['position']}" + (f" ~{eta:.0f}s" if eta is not None else "")
    swapped = row.get("swapped")
    if swapped:
        state += f" (KV swapped, {swapped['bytes'] / 2**20:.0f} MiB in {swapped['where']})"
    return state


def kill(request_id: str, url: Optional[str] = URL, api_key: Optional[str] = KEY,
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Cancel a request, or kill an agent, by id (see `llmos ps`)."""
    from llmos.kernel.errors import ProcessNotFoundError

    from .cli_common import fail

    _target(url, api_key)
    with kernel_session(as_json) as kernel:
        killed = kernel.cancel(request_id)
    if not killed:
        raise fail(ProcessNotFoundError(f"no running request or agent {request_id!r}: `llmos ps` lists them",
                                        param="request_id"), as_json)
    typer.echo(json.dumps({"killed": request_id}) if as_json else f"killed {request_id}")
