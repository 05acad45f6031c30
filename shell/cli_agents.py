"""`llmos agent run` and `llmos sessions ...`: agent processes and the session store on the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from llmos.kernel.errors import LlmosError

from .cli_common import EXIT_FAILURE, EXIT_INTERRUPTED, err, fail, kernel_session, out

agent_app = typer.Typer(help="Agent processes: a goal, tools and budgets, run model -> tool -> model.",
                        no_args_is_help=True)
sessions_app = typer.Typer(help="Stored chat sessions and agent runs ($LLMOS_HOME/sessions.db).",
                           no_args_is_help=True)


@agent_app.command("run")
def agent_run(
    goal: str = typer.Argument(..., help="What the agent should achieve; '-' reads it from standard input."),
    tools: Optional[str] = typer.Option(None, "--tools", help="Comma list of tools (default: all; see `llmos tools`)."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a"),
    max_steps: int = typer.Option(8, "--max-steps", help="Most LLM calls."),
    max_tokens: int = typer.Option(2048, "--max-tokens", help="Most generated tokens over all steps."),
    session: Optional[str] = typer.Option(None, "--session", help="Resume this stored agent session."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Approve tools that need ungranted capabilities."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per event."),
) -> None:
    """Run an agent, streaming each step (Ctrl-C kills it); stored as a session."""
    if goal == "-":
        goal = sys.stdin.read()
    names = [t.strip() for t in tools.split(",") if t.strip()] if tools is not None else None
    with kernel_session(as_json) as kernel:
        proc = kernel.spawn(goal, tools=names, model=model, adapter=adapter, max_steps=max_steps,
                            max_tokens=max_tokens, session=session, owner="cli",
                            approve=(lambda _tool, _caps: "once") if yes else None)
        try:
            for event in proc.events():
                _show(event, as_json)
        except KeyboardInterrupt:
            proc.kill()
            proc.wait(10)
            err.print(f"[yellow]interrupted: {proc.pid} killed (session {proc.session_id})[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        proc.wait()
        if as_json:
            typer.echo(json.dumps({"event": "end", "pid": proc.pid, "state": proc.state.name.lower(),
                                   "answer": proc.answer, "error": proc.error, "steps": proc.step,
                                   "tokens": proc.tokens, "session": proc.session_id}))
        else:
            err.print(f"[dim]{proc.pid} {proc.state.name.lower()} after {proc.step} step(s), {proc.tokens} tokens; "
                      f"session {proc.session_id}[/]", highlight=False)
        if proc.answer is None:
            raise typer.Exit(EXIT_FAILURE)


def _show(event, as_json: bool) -> None:
    if as_json:
        if event.kind != "token":
            typer.echo(json.dumps({"event": event.kind, "step": event.step, "text": event.text, **event.data},
                                  default=str))
        return
    if event.kind == "step":
        err.print(f"[bold cyan]step {event.step}[/]", highlight=False)
    elif event.kind == "token":
        err.print(event.text, end="", style="dim", highlight=False, markup=False)
    elif event.kind == "tool_call":
        err.print(f"\n[magenta]→ {event.data['name']}[/] {json.dumps(event.data['arguments'])}", highlight=False)
    elif event.kind == "tool_result":
        err.print(f"[green]← {event.text[:500]}[/]", highlight=False, markup=False)
    elif event.kind == "error":
        err.print(f"\n[red]{event.text}[/]", highlight=False)
    elif event.kind == "answer":
        err.print()
        typer.echo(event.text)


@sessions_app.command("ls")
def sessions_ls(kind: Optional[str] = typer.Option(None, "--kind", help="chat or agent."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """List sessions, most recent first."""
    with kernel_session(as_json) as kernel:
        rows = kernel.sessions.list(kind)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("id", "name", "kind", "state", "model", "messages", "title")
    for r in rows:
        table.add_row(r["id"], r["name"] or "-", r["kind"], r["state"], r["model"] or "default", str(r["messages"]),
                      (r["title"] or "")[:50])
    out.print(table)


@sessions_app.command("show")
def sessions_show(session: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a session's settings and messages."""
    with kernel_session(as_json) as kernel:
        typer.echo(kernel.sessions.export(session, "json" if as_json else "md"))


@sessions_app.command("export")
def sessions_export(session: str, fmt: str = typer.Option("md", "--format", "-f", help="md or json."),
                    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file.")) -> None:
    """Export a session as Markdown or JSON."""
    with kernel_session(False) as kernel:
        text = kernel.sessions.export(session, fmt)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")


@sessions_app.command("rm")
def sessions_rm(session: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete a session and its messages."""
    with kernel_session(as_json) as kernel:
        try:
            kernel.sessions.delete(session)
        except LlmosError as exc:
            raise fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps({"deleted": session}))
