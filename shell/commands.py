"""Shell commands: parsing and dispatch, separate from the widgets.

A line starting with `/` (or `:`) is a command; anything else is chat. `CommandSet.run(ctx, line)`
runs one command against the kernel's public API and returns a `Reply`: Markdown to show in the chat
log, an error flag, and optionally an action for the App (open a screen, start an agent, switch the
conversation, quit). Every `LlmosError` becomes an inline error reply, never an exception. Commands
may block (memfs search, module loads): the App runs them in worker threads.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from llmos.kernel.errors import InvalidRequestError, LlmosError
from llmos.kernel.sched.request import Priority
from llmos.kernel.tools.tools import parse_cli_params

from .conversation import Conversation


class UnknownCommandError(InvalidRequestError):
    code = "unknown_command"


class NotAvailableError(LlmosError):
    code = "not_available"


@dataclass
class Reply:
    text: str = ""
    error: bool = False
    action: str | None = None  # "screen" | "agent" | "conversation" | "settings" | "clear" | "quit"
    arg: Any = None


@dataclass
class Context:
    kernel: Any
    conv: Conversation
    approve: Callable[[str, frozenset[str]], str] | None = None
    agents: dict[str, Any] = field(default_factory=dict)  # pid -> Process spawned by this shell
    sampling: dict[str, Any] = field(default_factory=dict)  # what the shell's chat requests are sent with


@dataclass(frozen=True)
class ShellCommand:
    name: str
    usage: str
    help: str
    fn: Callable[[Context, str], Reply]
    complete: str | None = None  # what the argument completes to: model | module | path | session
    plugin: str | None = None


def is_command(line: str) -> bool:
    return line.startswith(("/", ":")) and len(line) > 1 and not line.startswith(("//", "::"))


def split_line(line: str) -> tuple[str, str]:
    """'/cmd rest of line' -> ('cmd', 'rest of line')."""
    name, _, rest = line[1:].strip().partition(" ")
    return name.lower(), rest.strip()


def md_table(rows: list[dict[str, Any]], columns: list[str], empty: str = "_(none)_") -> str:
    if not rows:
        return empty

    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        return "-" if v is None or v == "" else str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows)


def _need(args: str, usage: str) -> str:
    if not args:
        raise InvalidRequestError(f"missing argument: usage {usage}", param="args")
    return args


# -- built-in commands ------------------------------------------------------------------------------

def _model(ctx: Context, args: str) -> Reply:
    if not args:
        names = ", ".join(m["name"] for m in ctx.kernel.models_info())
        return Reply(f"model: **{ctx.conv.model}** (available: {names})")
    spec = ctx.kernel.registry.resolve(args)  # UnknownModelError lists what exists
    ctx.conv.update(model=spec.name)
    return Reply(f"model set to **{spec.name}**", action="settings")


def _adapter(ctx: Context, args: str) -> Reply:
    _need(args, "/adapter NAME|none")
    if args.lower() in ("none", "off", "-"):
        ctx.conv.update(adapter=None)
        return Reply("adapter cleared", action="settings")
    installed = {m["name"]: m for m in ctx.kernel.modules_info()}
    if args not in installed:
        raise InvalidRequestError(f"no installed module {args!r}: installed are {sorted(installed) or 'none'}",
                                  param="adapter")
    ctx.conv.update(adapter=args, model=installed[args].get("base_model") or ctx.conv.setting("model"))
    return Reply(f"adapter set to **{args}**", action="settings")


def _system(ctx: Context, args: str) -> Reply:
    if not args:
        return Reply(f"system prompt: {ctx.conv.system or '_(default)_'}")
    ctx.conv.update(system=None if args.lower() in ("none", "off") else args)
    return Reply("system prompt " + ("cleared" if ctx.conv.system is None else "set"), action="settings")


def _new(ctx: Context, args: str) -> Reply:
    return Reply("new conversation", action="conversation", arg=ctx.conv.fresh())


def _sessions(ctx: Context, args: str) -> Reply:
    if args:
        conv = ctx.conv.switch(args)
        return Reply(f"switched to session **{conv.title}**", action="conversation", arg=conv)
    rows = sorted(ctx.conv.sessions(), key=lambda s: -(s.get("updated") or 0))
    return Reply(md_table(rows, ["name", "kind", "model", "messages", "title"], "_(no sessions)_"))


def state_name(state: Any) -> str:
    """A process or request state as a lower-case word (enums by name)."""
    return str(getattr(state, "name", state)).lower()


def process_rows(kernel: Any, agents: dict[str, Any]) -> list[dict[str, Any]]:
    """`kernel.ps()` plus this shell's agents the kernel does not list itself."""
    rows = list(kernel.ps())
    seen = {str(r.get("id")) for r in rows}
    rows += [{"id": pid, "owner": "shell", "model": getattr(p, "model", None) or "agent",
              "state": state_name(getattr(p, "state", "?"))} for pid, p in list(agents.items()) if pid not in seen]
    return rows


def _ps(ctx: Context, args: str) -> Reply:
    rows = process_rows(ctx.kernel, ctx.agents)
    return Reply(md_table(rows, ["id", "owner", "model", "state", "output_tokens", "tokens_per_s"],
                          "_(nothing running)_"))


def _kill(ctx: Context, args: str) -> Reply:
    pid = _need(args, "/kill PID")
    if pid in ctx.agents:
        ctx.agents[pid].kill()
        return Reply(f"killed agent {pid}")
    if not ctx.kernel.cancel(pid):
        raise InvalidRequestError(f"no live request {pid!r} (see /ps)", param="pid")
    return Reply(f"cancelled {pid}")


def _lsmod(ctx: Context, args: str) -> Reply:
    return Reply(md_table(ctx.kernel.lsmod(), ["name", "base_model", "driver", "use_count"], "_(no modules loaded)_"))


def _insmod(ctx: Context, args: str) -> Reply:
    row = ctx.kernel.insmod(_need(args, "/insmod NAME"))
    return Reply(f"loaded **{row.get('name', args)}** on {row.get('driver', '?')}")


def _rmmod(ctx: Context, args: str) -> Reply:
    ctx.kernel.rmmod(_need(args, "/rmmod NAME"))
    return Reply(f"unloaded **{args}**")


def _ls(ctx: Context, args: str) -> Reply:
    rows = ctx.kernel.mem.ls(args or "/")
    return Reply(md_table([{**r, "path": r["path"] + ("/" if r["type"] == "dir" else "")} for r in rows],
                          ["path", "type", "size"], "_(empty)_"))


def _cat(ctx: Context, args: str) -> Reply:
    text = ctx.kernel.mem.cat(_need(args, "/cat PATH"))
    return Reply(f"**{args}**\n\n```\n{text}\n```")


def _find(ctx: Context, args: str) -> Reply:
    hits = ctx.kernel.mem.find(_need(args, "/find QUERY"))
    return Reply(md_table([{**h, "text": str(h.get("text", ""))[:60]} for h in hits], ["score", "path", "text"],
                          "_(no matches)_"))


def _write(ctx: Context, args: str) -> Reply:
    path, _, text = _need(args, "/write PATH [TEXT]").partition(" ")
    text = text.strip() or ctx.conv.last_answer()
    if not text:
        raise InvalidRequestError("nothing to write: no answer yet and no text after the path", param="text")
    row = ctx.kernel.mem.write(path, text)
    return Reply(f"wrote {row.get('size', len(text))} bytes to **{row.get('path', path)}**")


def _rag(ctx: Context, args: str) -> Reply:
    arg = _need(args, "/rag DIR|off")
    if arg.lower() in ("off", "none"):
        ctx.conv.rag = None
        return Reply("answers no longer use memfs passages", action="settings")
    if ctx.kernel.mem.stat(arg)["type"] != "dir":
        raise InvalidRequestError(f"{arg} is not a directory", param="dir")
    ctx.conv.rag = arg
    return Reply(f"answers now use passages under **{arg}**", action="settings")


def _priority(ctx: Context, args: str) -> Reply:
    if not args:
        return Reply(f"priority: **{ctx.sampling.get('priority') or 'your tenant class'}**")
    if args.lower() in ("default", "off", "none"):
        ctx.sampling.pop("priority", None)
        return Reply("chat requests run at your tenant's class", action="settings")
    level = Priority.parse(args).name.lower()  # a bad name lists the good ones; the kernel checks the class
    ctx.sampling["priority"] = level
    return Reply(f"chat requests now run at priority **{level}**", action="settings")


def _tools(ctx: Context, args: str) -> Reply:
    rows = [t.as_dict() for t in ctx.kernel.tools.all().values()]
    return Reply(md_table(rows, ["name", "capabilities", "plugin", "description"]))


def _call(ctx: Context, args: str) -> Reply:
    name, _, raw = _need(args, "/call TOOL {json}").partition(" ")
    try:
        parsed = json.loads(raw or "{}")
    except ValueError as exc:
        raise InvalidRequestError(f"arguments are not valid JSON: {exc}", param="args") from None
    result = ctx.kernel.call_tool(name, parsed, owner="shell", approve=ctx.approve)
    if not result.ok:
        return Reply(f"tool {name} failed: {result.error}", error=True)
    return Reply(f"`{name}` → `{json.dumps(result.value, default=str)}`")


def _task(ctx: Context, args: str) -> Reply:
    parts = shlex.split(_need(args, "/task NAME k=v ..."))
    task = ctx.kernel.tools.tasks.get(parts[0])
    params = parse_cli_params(task.schema if task else {}, parts[1:])
    result = ctx.kernel.run_task(parts[0], params)
    return Reply(f"```json\n{json.dumps(result, indent=2, default=str)}\n```")


def _agent(ctx: Context, args: str) -> Reply:
    goal = _need(args, "/agent GOAL")
    if not hasattr(ctx.kernel, "spawn"):
        raise NotAvailableError("agents are not available in this kernel (no kernel.spawn)")
    return Reply(f"agent: {goal}", action="agent", arg=goal)


def _plugins(ctx: Context, args: str) -> Reply:
    return Reply(md_table(ctx.kernel.plugins_info(), ["name", "version", "source", "error"]))


def _screen(name: str) -> Callable[[Context, str], Reply]:
    return lambda ctx, args: Reply(action="screen", arg=name)


BUILTINS: list[ShellCommand] = [
    ShellCommand("help", "/help [COMMAND]", "list commands, or show one", lambda c, a: Reply()),
    ShellCommand("model", "/model NAME", "chat with another model", _model, "model"),
    ShellCommand("adapter", "/adapter NAME|none", "answer through an installed module", _adapter, "module"),
    ShellCommand("system", "/system TEXT|none", "set the system prompt", _system),
    ShellCommand("new", "/new", "start a new conversation", _new),
    ShellCommand("sessions", "/sessions [NAME]", "list sessions, or switch to one", _sessions, "session"),
    ShellCommand("ps", "/ps", "live requests and agents", _ps),
    ShellCommand("kill", "/kill PID", "cancel a request or agent", _kill),
    ShellCommand("top", "/top", "process monitor (F2)", _screen("top")),
    ShellCommand("modules", "/modules", "modules screen (F3)", _screen("modules")),
    ShellCommand("mem", "/mem", "memfs browser (F4)", _screen("mem")),
    ShellCommand("lsmod", "/lsmod", "loaded modules", _lsmod),
    ShellCommand("insmod", "/insmod NAME", "load a module", _insmod, "module"),
    ShellCommand("rmmod", "/rmmod NAME", "unload a module", _rmmod, "module"),
    ShellCommand("ls", "/ls [DIR]", "list a memfs directory", _ls, "path"),
    ShellCommand("cat", "/cat PATH", "show a memfs file", _cat, "path"),
    ShellCommand("find", "/find QUERY", "search memfs by meaning", _find),
    ShellCommand("write", "/write PATH [TEXT]", "save the last answer (or TEXT) to memfs", _write, "path"),
    ShellCommand("rag", "/rag DIR|off", "answer from memfs passages under DIR", _rag, "path"),
    ShellCommand("priority", "/priority LEVEL|default", "run chat requests at realtime, high, normal, low or batch",
                 _priority),
    ShellCommand("tools", "/tools", "tools plugins registered", _tools),
    ShellCommand("call", "/call TOOL {json}", "call a tool (asks before granting capabilities)", _call, "tool"),
    ShellCommand("task", "/task NAME k=v ...", "run a task", _task, "task"),
    ShellCommand("agent", "/agent GOAL", "start an agent working on GOAL", _agent),
    ShellCommand("plugins", "/plugins", "loaded plugins", _plugins),
    ShellCommand("clear", "/clear", "clear the chat log (the session is kept)", lambda c, a: Reply(action="clear")),
    ShellCommand("quit", "/quit", "leave the shell (ctrl+q)", lambda c, a: Reply(action="quit")),
]


class CommandSet:
    """The built-in commands plus the commands plugins register (`register_commands` hook)."""

    def __init__(self, kernel: Any) -> None:
        self.commands: dict[str, ShellCommand] = {c.name: c for c in BUILTINS}
        plugin_cmds = getattr(getattr(kernel, "tools", None), "commands", {}) or {}
        for name, cmd in plugin_cmds.items():
            if name not in self.commands:
                self.commands[name] = ShellCommand(name, f"/{name} ARGS...", cmd.help or "", _plugin_runner(cmd),
                                                   plugin=cmd.plugin)

    def names(self) -> list[str]:
        return sorted(self.commands)

    def help(self, name: str = "") -> Reply:
        if name:
            cmd = self.commands.get(name.lstrip("/:"))
            if cmd is None:
                raise UnknownCommandError(f"unknown command /{name}: /help lists them", param="command")
            return Reply(f"`{cmd.usage}`: {cmd.help}" + (f" (plugin {cmd.plugin})" if cmd.plugin else ""))
        rows = [{"command": f"`{c.usage}`", "what": c.help + (f" (plugin {c.plugin})" if c.plugin else "")}
                for c in self.commands.values()]
        return Reply(md_table(rows, ["command", "what"]))

    def run(self, ctx: Context, line: str) -> Reply:
        """Run one command line; errors come back as `Reply(error=True)`, never raised."""
        name, args = split_line(line)
        try:
            if name == "help":
                return self.help(args)
            cmd = self.commands.get(name)
            if cmd is None:
                close = [n for n in self.names() if n.startswith(name[:2])] if name else []
                hint = f" (did you mean {', '.join('/' + n for n in close)}?)" if close else ""
                raise UnknownCommandError(f"unknown command /{name}{hint}: /help lists them", param="command")
            return cmd.fn(ctx, args)
        except LlmosError as exc:
            return Reply(str(exc), error=True)
        except (ValueError, LookupError, OSError) as exc:  # bad quoting, a plugin's own error...
            return Reply(f"/{name}: {exc}", error=True)


def _plugin_runner(cmd: Any) -> Callable[[Context, str], Reply]:
    def run(ctx: Context, args: str) -> Reply:
        result = cmd.handler(ctx.kernel, shlex.split(args))
        if result is None:
            return Reply(f"/{cmd.name}: done")
        return Reply(result if isinstance(result, str) else f"```json\n{json.dumps(result, default=str)}\n```")
    return run
