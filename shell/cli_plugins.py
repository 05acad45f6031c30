"""`llmos plugins | tools | tasks | task run | audit`, and the commands plugins register."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from llmos.kernel.errors import InvalidRequestError

from .cli_common import EXIT_FAILURE, fail, kernel_session, out

tools_app = typer.Typer(help="Tools registered by plugins and MCP servers.", invoke_without_command=True)
task_app = typer.Typer(help="Run a task registered by a plugin.", no_args_is_help=True)


def _print(rows: list[dict], columns: list[str], as_json: bool, **fmt) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*[fmt.get(c, str)(row.get(c)) for c in columns])
    out.print(table)


def plugins(as_json: bool = typer.Option(False, "--json")) -> None:
    """List plugins: name, version, source, hooks implemented, load error."""
    with kernel_session(as_json) as kernel:
        rows = kernel.plugins_info()
    _print(rows, ["name", "version", "source", "hooks", "error"], as_json, hooks=", ".join,
           error=lambda e: e or "")


@tools_app.callback()
def tools(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List tools: name, description, JSON schema, capabilities, plugin."""
    if ctx.invoked_subcommand is not None:
        return
    with kernel_session(as_json) as kernel:
        rows = [t.as_dict() for t in kernel.tools.all().values()]
        errors = kernel.tools.mcp.errors
    _print(rows, ["name", "description", "capabilities", "plugin"], as_json, capabilities=", ".join)
    for server, error in errors.items():
        out.print(f"[yellow]MCP server {server}: {error}[/]") if not as_json else None


@tools_app.command("call")
def tools_call(name: str, args: str = typer.Option("{}", "--args", help="Arguments as a JSON object."),
               as_json: bool = typer.Option(True, "--json/--text")) -> None:
    """Call a tool with JSON arguments (validated against its schema) and print the result as JSON."""
    try:
        parsed = json.loads(args)
    except ValueError as exc:
        raise fail(InvalidRequestError(f"--args is not valid JSON: {exc}", param="args"), as_json) from None
    with kernel_session(as_json) as kernel:
        result = kernel.call_tool(name, parsed, owner="cli")
    typer.echo(json.dumps(result.as_dict(), default=str) if as_json else str(result.value or result.error))
    if not result.ok:
        raise typer.Exit(EXIT_FAILURE)


def tasks(as_json: bool = typer.Option(False, "--json")) -> None:
    """List tasks: name, description, parameters, plugin."""
    with kernel_session(as_json) as kernel:
        rows = [t.as_dict() for t in kernel.tools.tasks.values()]
    _print(rows, ["name", "description", "schema", "plugin"], as_json,
           schema=lambda s: ", ".join(s.get("properties", {})))


@task_app.command("run")
def task_run(name: str, param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="key=value"),
             as_json: bool = typer.Option(True, "--json/--text")) -> None:
    """Run a task; parameters are parsed per its schema (lists as a,b,c)."""
    with kernel_session(as_json) as kernel:
        task = kernel.tools.tasks.get(name)
        from llmos.kernel.tools.tools import parse_cli_params

        params = parse_cli_params(task.schema if task else {}, param or [])
        result = kernel.run_task(name, params)
    typer.echo(json.dumps(result, default=str) if as_json else str(result))


def audit(as_json: bool = typer.Option(False, "--json"), limit: int = typer.Option(50, "--limit")) -> None:
    """Show the tool-call audit log (newest last)."""
    with kernel_session(as_json) as kernel:
        rows = kernel.tools.audit.read(limit)
    _print(rows, ["ts", "who", "tool", "decision", "outcome", "duration_s", "error"], as_json,
           error=lambda e: e or "")


def add_plugin_commands(app: typer.Typer) -> None:
    """Expose the commands plugins register as `llmos NAME ARGS...`."""
    from llmos.plugins.manager import PluginManager

    reserved = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    for cmd in PluginManager().collect_commands().values():
        if cmd.name in reserved:
            continue

        def run(ctx: typer.Context, _cmd=cmd) -> None:
            with kernel_session(False) as kernel:
                result = _cmd.handler(kernel, list(ctx.args))
            if result is not None:
                typer.echo(result if isinstance(result, str) else json.dumps(result, default=str))

        app.command(cmd.name, help=f"{cmd.help} (plugin {cmd.plugin})",
                    context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run)
