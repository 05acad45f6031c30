"""The `llmos` command line (typer). Thin: every command calls the kernel's public API.

Errors from llmos are printed as one line (`error: ...`) on stderr, or as {"error": {...}} with
--json, and exit with 2 for bad input and 1 for anything else. Model loading shows a progress bar
on an interactive terminal.
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer
from rich.table import Table

import llmos
from llmos.kernel.errors import InvalidRequestError, LlmosError

from .cli_agents import agent_app, sessions_app
from .cli_alerts import alerts_app
from .cli_daemon import down, logs, status, up
from .cli_deploy import merge, quantize
from .cli_eval import eval_command
from .cli_common import EXIT_FAILURE, EXIT_INTERRUPTED, STATE, err, fail, kernel_session, out
from .cli_finetune import finetune
from .cli_keys import keys_app, tenants
from .cli_mem import mem_app
from .cli_modules import mod_app
from .cli_plugins import add_plugin_commands, audit, plugins, task_app, tasks, tools_app
from .cli_ps import kill, ps
from .cli_serve import serve

app = typer.Typer(
    name="llmos", add_completion=False,
    help="llmos: an LLM operating system runtime (kernel, drivers, modules, memory, plugins).",
)
def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmos {llmos.__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    home: Optional[str] = typer.Option(None, "--home", envvar="LLMOS_HOME", help="Data directory (LLMOS_HOME)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    local: bool = typer.Option(False, "--local", envvar="LLMOS_LOCAL",
                               help="Boot an in-process kernel instead of using the resident one (`llmos up`); "
                                    "also accepted after any command."),
) -> None:
    """llmos: an LLM operating system runtime. Without a command, opens the shell.

    Commands use the resident kernel when one is up (`llmos up`; `llmos shell` starts it) and an
    in-process kernel otherwise; `--local` always boots one in process."""
    STATE["home"] = home
    STATE["local"] = STATE["local"] or local
    if ctx.invoked_subcommand is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):  # no terminal to draw on: show the help
            typer.echo(ctx.get_help())
            raise typer.Exit()
        shell(model=None, new=False)


@app.command()
def shell(model: Optional[str] = typer.Option(None, "--model", "-m", help="Chat with this model."),
          new: bool = typer.Option(False, "--new", help="Start a new chat instead of resuming the last one.")) -> None:
    """Open the interactive shell (a terminal UI: chat, commands, process monitor) on the resident kernel,
    starting it when none is up (`--local`: an in-process kernel). See docs/shell.md."""
    from .app import main as shell_main

    shell_main(home=STATE["home"], model=model, resume=not new, local=bool(STATE["local"]))




@app.command()
def run(
    prompt: str = typer.Argument(..., help="The prompt; '-' reads it from standard input."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or path (see `llmos models`)."),
    driver: Optional[str] = typer.Option(None, "--driver", help="Force a driver (e.g. llamacpp)."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most new tokens to generate."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t",
                                                help="0 is greedy; up to 2 (default: the model's, see `llmos models`)."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="0 disables it."),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", "--repeat-penalty",
                                                       help="1 disables it."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop sequence (repeatable)."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as is, without the chat template."),
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="An installed module (see `llmos mod ls`)."),
    rag: Optional[str] = typer.Option(None, "--rag", help="Answer from memfs passages under this directory."),
    priority: Optional[str] = typer.Option(None, "--priority",
                                           help="realtime, high, normal, low or batch (at most your tenant's class)."),
    session: Optional[str] = typer.Option(None, "--session", help="Continue (or create) this named chat session."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Generate an answer, streaming it to stdout."""
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise fail(InvalidRequestError("prompt is empty: give some text", param="prompt"), as_json)
    sampling = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                    repetition_penalty=repetition_penalty, stop=tuple(stop or ()))  # None: the model's default
    if raw and (system or session):
        raise fail(InvalidRequestError("--system and --session need chat prompts, not --raw",
                                       param="system" if system else "session"), as_json)
    user = {"role": "user", "content": prompt}
    request = dict(prompt=prompt) if raw else dict(
        messages=([{"role": "system", "content": system}] if system else []) + [user])
    with kernel_session(as_json) as kernel:
        stored = None
        if session is not None:  # the session's history (and its system prompt) come first
            stored = kernel.sessions.open(session, model=model, system=system)
            model = model or stored.model
            system_msgs = [{"role": "system", "content": stored.system}] if stored.system else []
            request = dict(messages=system_msgs + stored.messages + [user])
        if rag is not None and raw:
            raise fail(InvalidRequestError("--rag works with chat prompts, not --raw", param="rag"), as_json)
        handle = kernel.submit(**request, model=model, driver=driver, adapter=adapter, rag=rag, owner="cli",
                               priority=priority, **sampling)
        try:
            if as_json:
                completion = handle.result(check=False)
                if stored is not None and not completion.error:
                    stored.append(user)
                    stored.append({"role": "assistant", "content": completion.text})
                typer.echo(json.dumps(completion.as_dict()))
                if completion.error:
                    raise typer.Exit(EXIT_FAILURE)
                return
            for chunk in handle.stream():
                sys.stdout.write(chunk)
                sys.stdout.flush()
            sys.stdout.write("\n")
            completion = handle.result()
            if stored is not None:
                stored.append(user)
                stored.append({"role": "assistant", "content": completion.text})
            if completion.sources:
                sys.stdout.write("Sources: " + " ".join(f"[{p}]" for p in completion.sources) + "\n")
        except KeyboardInterrupt:
            handle.cancel()
            sys.stdout.write("\n")
            err.print("[yellow]interrupted: generation cancelled[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """List the models llmos can resolve, with driver, path, size and default sampling."""
    with kernel_session(as_json) as kernel:
        rows = kernel.models_info()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "drivers", "size", "path", "sampling", "description")
    for row in rows:
        sampling = " ".join(f"{k}={v}" for k, v in row["sampling"].items()) or "the node's"
        table.add_row(row["name"], ",".join(row["drivers"]) or "-", f"{row['size_bytes'] / 1e6:.0f} MB",
                      row.get("path", "-"), sampling, row["description"])
    out.print(table)


@app.command()
def bench(
    names: Optional[List[str]] = typer.Argument(None, help="Benchmarks to run (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of results."),
    repeat: int = typer.Option(3, "--repeat", "-r", help="Runs of each benchmark: the median ratio decides."),
) -> None:
    """Run benchmarks side by side and print baseline, candidate and their ratio (medians of --repeat runs)."""
    from llmos.benchmarks import run_benchmarks

    try:
        results = run_benchmarks(names or None, home=STATE["home"], progress=None if as_json else err, repeat=repeat)
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    table = Table("name", "baseline", "candidate", "unit", "ratio (median)", "min-max", "target", "met")
    for r in results:
        table.add_row(r.name, f"{r.baseline:.3g}", f"{r.candidate:.3g}", r.first.unit, f"{r.ratio:.2f}x",
                      f"{r.ratios[0]:.2f}-{r.ratios[-1]:.2f}x", f">= {r.first.target:g}x", "yes" if r.met else "no")
    out.print(table)


app.add_typer(mod_app, name="mod")
app.add_typer(mem_app, name="mem")
app.command("finetune")(finetune)
app.command("eval")(eval_command)
app.command("quantize")(quantize)
mod_app.command("merge")(merge)
app.command("plugins")(plugins)
app.add_typer(tools_app, name="tools")
app.command("tasks")(tasks)
app.add_typer(task_app, name="task")
app.command("audit")(audit)
app.command("serve")(serve)
app.command("up")(up)
app.command("status")(status)
app.command("down")(down)
app.command("logs")(logs)
app.command("ps")(ps)
app.command("kill")(kill)
app.add_typer(alerts_app, name="alerts")
app.add_typer(agent_app, name="agent")
app.add_typer(sessions_app, name="sessions")
app.add_typer(keys_app, name="keys")
app.command("tenants")(tenants)


def _take_local(argv: list[str]) -> list[str]:
    """argv without the `--local` flags given anywhere before a `--` (they set STATE["local"])."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--local" in argv[:end]:
        STATE["local"] = True
        return [a for a in argv[:end] if a != "--local"] + argv[end:]
    return argv


def _subcommand(argv: list[str]) -> str | None:
    """The command named in `argv` (past the root options), if any."""
    args = iter(argv)
    for arg in args:
        if arg == "--home":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _builtin_commands() -> set[str]:
    return {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands} | \
        {g.name for g in app.registered_groups}


def main() -> None:
    argv = _take_local(sys.argv[1:])
    if _subcommand(argv) not in _builtin_commands():  # loading plugins costs start-up: only when one may be meant
        add_plugin_commands(app)
    app(args=argv, prog_name="llmos")
