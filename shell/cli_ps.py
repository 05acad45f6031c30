"""`llmos ps` / `llmos kill`: processes of a running kernel, reached through its server (`llmos serve`)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from llmos.kernel.errors import LlmosError

from .cli_common import fail, out

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="LLMOS_URL", help="The running kernel's server.")
KEY = typer.Option(None, "--api-key", envvar="LLMOS_API_KEY")


class ServerUnreachableError(LlmosError):
    code = "server_unreachable"


def _call(method: str, url: str, path: str, key: Optional[str], as_json: bool):
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise fail(ServerUnreachableError(f"no llmos server at {url} ({exc}): start one with `llmos serve`"),
                   as_json) from None
    if r.status_code >= 400:
        message = r.json().get("error", {}).get("message", r.text) if r.headers.get("content-type", "").startswith(
            "application/json") else r.text
        raise fail(LlmosError(f"{r.status_code}: {message}"), as_json)
    return r.json()


def ps(url: str = URL, api_key: Optional[str] = KEY, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the requests and embedding jobs of a running kernel."""
    rows = _call("GET", url, "/llmos/ps", api_key, as_json)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "owner", "model", "driver", "state", "priority", "tokens", "age", "tok/s")
    for r in rows:
        tps = r.get("tokens_per_s")
        table.add_row(r["id"], r["owner"], r["model"], r["driver"], r["state"], r["priority"],
                      str(r.get("output_tokens") or ""), f"{r['age_s']:.1f}s", f"{tps:.1f}" if tps else "")
    out.print(table)


def kill(request_id: str, url: str = URL, api_key: Optional[str] = KEY) -> None:
    """Cancel a request in a running kernel."""
    _call("POST", url, f"/llmos/kill/{request_id}", api_key, False)
    out.print(f"killed {request_id}")
