"""The llmos shell: a Textual app for chatting with models and driving the kernel.

Everything goes through the kernel's public API. Blocking calls (boot, submit, commands, agents) run
in `@work(thread=True)` workers that post Messages back; the UI thread only renders. Replies stream
into Markdown widgets through `ReplyStream` (shell/streaming.py: throttled writes into Textual's
`MarkdownStream`, long replies split into segments). See docs/shell.md.
"""

from __future__ import annotations

import gc
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, Header

from llmos.kernel.errors import LlmosError, RequestCancelledError

from .agent_view import AgentView, relay
from .commands import CommandSet, Context, Reply, is_command
from .completion import Completer
from .conversation import Conversation
from .pacing import FramePacer
from .palette import ShellCommandsProvider
from .screens.chat import ChatScreen
from .streaming import Feed, ReplyStream, finished_completion
from .widgets.chat_log import ChatLog
from .widgets.prompt_input import PromptInput
from .widgets.status_line import StatusLine

REPLAY = 40  # messages of a resumed session shown in the log


class ShellApp(App):
    CSS_PATH = "shell.tcss"
    TITLE = "llmos"
    COMMANDS = App.COMMANDS | {ShellCommandsProvider}
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("f2", "open_screen('top')", "Top"),
        Binding("f3", "open_screen('modules')", "Modules"),
        Binding("f4", "open_screen('mem')", "Memory"),
        Binding("ctrl+n", "new_chat", "New chat"),
    ]

    class Booted(Message):
        def __init__(self, kernel: Any, conv: Conversation | None, error: str | None = None) -> None:
            super().__init__()
            self.kernel, self.conv, self.error = kernel, conv, error

    class Token(Message):
        """New text waits in the feed buffer (at most one of these is queued at a time)."""

    class ReplyDone(Message):
        def __init__(self, status: str, error: str | None = None, handle: Any = None) -> None:
            super().__init__()
            self.status, self.error, self.handle = status, error, handle

    class CommandDone(Message):
        def __init__(self, reply: Reply) -> None:
            super().__init__()
            self.reply = reply

    class AgentEvent(Message):
        def __init__(self, kind: str, text: str = "", step: int = 0, data: dict | None = None) -> None:
            super().__init__()
            self.kind, self.text, self.step, self.data = kind, text, step, data or {}

    def __init__(self, kernel: Any = None, *, home: str | None = None, model: str | None = None,
                 boot: bool = True, resume: bool = True, sampling: dict[str, Any] | None = None,
                 local: bool = False) -> None:
        super().__init__()
        self.kernel = kernel
        self._own_kernel = kernel is None
        self._home, self._model, self._boot_kernel, self._resume = home, model, boot, resume
        self._local = local
        self._attached = False  # set once the boot attached this shell to a resident kernel
        self.sampling = {"max_tokens": 1024, **(sampling or {})}
        self.conv: Conversation | None = None
        self.commands: CommandSet | None = None
        self.completer: Completer | None = None
        self.agents: dict[str, Any] = {}
        self.handle: Any = None  # the RequestHandle of the reply streaming now
        self.agent: Any = None  # the agent Process running now
        self.reply: ReplyStream | None = None  # the reply streaming now
        self.last_reply: dict[str, Any] = {}  # status, error, text, request id of the last reply
        self._busy = False
        self._cancel_requested = False
        self.commands_done = 0  # command lines answered so far
        self.ready = False  # booted and the conversation shown
        self.pause_gc = True  # no cyclic garbage collection while a reply streams (bounded by max_tokens)
        self._feed = Feed()  # reply text from the worker, drained by the UI thread
        self.pacer = FramePacer()  # how often a streaming reply is drawn (slower while the cores are busy)
        self._agent_view = AgentView(pace=self.pacer.interval)

    # -- layout and boot ---------------------------------------------------------------------------

    def get_default_screen(self) -> ChatScreen:
        return ChatScreen(id="_default")

    def compose(self) -> ComposeResult:
        yield Header()
        yield ChatLog(id="chat")
        yield StatusLine(id="status")
        yield PromptInput(suggest=self._suggest, id="prompt")
        yield Footer()

    @property
    def chat_log(self) -> ChatLog:
        return self.query_one("#chat", ChatLog)

    @property
    def status(self) -> StatusLine:
        return self.query_one("#status", StatusLine)

    def on_mount(self) -> None:
        gc.freeze()  # imports, widgets, the kernel: never garbage, never scanned again
        self.query_one("#prompt", PromptInput).focus()
        if self.kernel is not None or self._boot_kernel:
            self.status.state = "booting..."
            self._boot()

    @work(thread=True, group="boot")
    def _boot(self) -> None:
        try:
            kernel = self.kernel
            if kernel is None:
                from .attach import shell_kernel

                kernel = shell_kernel(self._home, local=self._local,
                                      say=lambda text: self.call_from_thread(setattr, self.status, "state", text))
                self._attached = not self._local
            conv = Conversation.resume(kernel, new=not self._resume)
            if self._model:
                conv.update(model=kernel.registry.resolve(self._model).name)
        except LlmosError as exc:
            self.post_message(self.Booted(None, None, str(exc)))
            return
        self.post_message(self.Booted(kernel, conv))
        try:  # load the model now so the first reply does not wait for it
            kernel.load(conv.model)
        except LlmosError:
            pass  # the first request reports it inline

    @on(Booted)
    async def _booted(self, event: Booted) -> None:
        if event.error:
            self.status.state = "boot failed"
            await self.chat_log.add(f"could not boot the kernel: {event.error}", "error")
            return
        self.kernel, self.conv = event.kernel, event.conv
        if self._attached:  # the resident kernel decodes in another process: it goes first
            from .attach import yield_cores_to_the_kernel

            yield_cores_to_the_kernel()
        self.commands = CommandSet(self.kernel)
        self.completer = Completer(self.commands)
        self.completer.wanted_dir = lambda d: self._fetch_dir(d)
        self._refresh_completions()
        await self._show_conversation()
        self.status.state = "ready - /help lists commands, esc cancels a reply"
        self.status.follow_alerts(self.kernel)
        self.ready = True

    async def _show_conversation(self) -> None:
        assert self.conv is not None
        shown = self.conv.messages[-REPLAY:]
        await self.chat_log.show(shown, earlier=len(self.conv.messages) - len(shown))
        self.update_header()

    def update_header(self) -> None:
        if self.conv is not None:
            self.sub_title = self.conv.header

    @work(thread=True, group="complete")
    def _refresh_completions(self) -> None:
        if self.completer is not None:
            self.completer.refresh(self.kernel)

    @work(thread=True, group="complete-dir")
    def _fetch_dir(self, directory: str) -> None:
        if self.completer is not None:
            self.completer.fetch_dir(self.kernel, directory)
            self.call_from_thread(self.query_one("#prompt", PromptInput).update_suggestion)

    def _suggest(self, text: str) -> str | None:
        return self.completer.suggest(text) if self.completer is not None else None

    def on_unmount(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.agent is not None:
            self.agent.kill()
        if self._own_kernel and self.kernel is not None:
            self.kernel.shutdown()

    # -- input -------------------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        if is_command(event.text):
            await self.run_command(event.text)
        else:
            await self.send_chat(event.text)

    async def run_command(self, line: str) -> None:
        await self.chat_log.add(f"`{line}`" if "`" not in line else line, "command")
        if self.commands is None or self.conv is None:
            await self.chat_log.add("the kernel is still booting: try again in a moment", "error")
            return
        self._command(line)

    @work(thread=True, group="command")
    def _command(self, line: str) -> None:
        assert self.commands is not None and self.conv is not None
        ctx = Context(self.kernel, self.conv, self.approve, self.agents, self.sampling)
        self.post_message(self.CommandDone(self.commands.run(ctx, line)))

    @on(CommandDone)
    async def _command_done(self, event: CommandDone) -> None:
        reply = event.reply
        if reply.action in ("conversation", "clear") and self._busy:  # the streaming reply would go nowhere
            await self.chat_log.add("a reply is still streaming: esc cancels it, then run the command again", "error")
            self.commands_done += 1
            return
        if reply.action == "screen":
            self.action_open_screen(reply.arg)
        elif reply.action == "conversation":
            self.conv = reply.arg
            await self._show_conversation()
            self._refresh_completions()
        elif reply.action == "settings":
            self.update_header()
        elif reply.action == "agent":
            await self.start_agent(reply.arg)
        elif reply.action == "clear":
            await self.chat_log.clear()
        elif reply.action == "quit":
            self.exit()
        if reply.text and reply.action != "agent":
            await self.chat_log.add(reply.text, "error" if reply.error else "info")
        if reply.text and not reply.error and reply.action is None:
            self._refresh_completions()  # insmod, write... may have changed what completes
        self.commands_done += 1

    def pick_command(self, name: str, runnable: bool) -> None:
        """From the command palette: run a command that takes no argument, else start typing it."""
        if runnable:
            self.call_later(self.run_command, name)
            return
        prompt = self.query_one("#prompt", PromptInput)
        prompt.text = name + " "
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    # -- chat --------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._busy

    async def send_chat(self, text: str) -> None:
        log = self.chat_log
        if self.conv is None or self.kernel is None:
            await log.add("the kernel is still booting: try again in a moment", "error")
            return
        if self._busy:
            await log.add("a reply is still streaming: esc cancels it", "error")
            return
        await log.add(text, "user")
        self.conv.append("user", text)
        await self.begin_reply()
        self.status.state = f"{self.conv.model} is answering... (esc cancels)"
        self._generate(self.conv.request_messages(), self.conv.setting("model"), self.conv.adapter, self.conv.rag,
                       self.conv.session_id)

    async def begin_reply(self) -> ReplyStream:
        """A new assistant message that `Token` messages stream into (also the benchmark's entry)."""
        self._busy, self._cancel_requested = True, False
        if self.pause_gc:  # a full collection over a big heap stalls rendering for 100+ ms
            gc.disable()
        self.pacer.start()
        self.reply = await ReplyStream(self.chat_log, source=self._feed.drain, pace=self.pacer.interval).start()
        return self.reply

    @work(thread=True, group="generate")
    def _generate(self, messages: list[dict], model: str | None, adapter: str | None, rag: str | None,
                  session: str | None = None) -> None:
        try:  # a turn of a stored session: its KV is saved for the next turn (also after a restart)
            handle = self.kernel.submit(messages=messages, model=model, adapter=adapter, rag=rag, owner="shell",
                                        session=session, **self.sampling)
        except LlmosError as exc:
            self.post_message(self.ReplyDone("failed", str(exc)))
            return
        self.handle = handle
        if self._cancel_requested:  # esc pressed while the request was being prepared
            handle.cancel()
        try:
            for chunk in handle.stream():
                self.feed(chunk)
            status, error = "done", None
        except RequestCancelledError:
            status, error = "cancelled", None
        except LlmosError as exc:
            status, error = "failed", str(exc)
        self.post_message(self.ReplyDone(status, error, handle))

    def feed(self, text: str) -> None:
        """Queue reply text from any thread. One wake-up message until the reply's next flush drains
        the feed: tokens arriving in between wake nothing, so a fast source costs the UI (and the
        cores it shares with the model) about two wake-ups per frame, not one per token."""
        if self._feed.put(text):
            self.post_message(self.Token())

    @on(Token)
    async def _token(self, event: Token) -> None:
        if self.reply is not None:
            await self.reply.write()  # the flush pulls the feed
        else:
            self._feed.drain()

    @on(ReplyDone)
    async def _reply_done(self, event: ReplyDone) -> None:
        message, handle = self.reply, event.handle
        if message is not None:
            await message.write(self._feed.drain())  # what the worker fed after the last wake-up
            await message.stop()
        text = message.text if message is not None else ""
        self.handle, self.reply, self._busy = None, None, False
        gc.enable()
        done = finished_completion(handle)
        self.last_reply = {"status": event.status, "error": event.error, "text": text,
                           "id": handle.id if handle is not None else None,
                           "tokens": len(done.token_ids) if done else 0,
                           "tokens_per_s": done.metrics.get("tokens_per_s") if done else None}
        if self.conv is not None and (text or event.status == "done"):
            self.conv.append("assistant", text, **({"status": event.status} if event.status != "done" else {}))
        if message is not None and event.status == "cancelled":
            await message.append_note("\n\n*[cancelled]*")
        if done is not None and done.sources and message is not None:
            await message.append_note("\n\nSources: " + " ".join(f"`{p}`" for p in done.sources))
        if event.error:
            await self.chat_log.add(event.error, "error")
        tps = self.last_reply["tokens_per_s"]
        speed = f": {self.last_reply['tokens']} tokens, {tps:.1f} tok/s" if tps else ""
        self.status.state = f"reply {event.status}{speed}"

    def action_cancel(self) -> None:
        """Esc: cancel the reply or agent in flight (the kernel frees its slot at the next step)."""
        if self._busy:
            self._cancel_requested = True
            if self.handle is not None:
                self.handle.cancel()
            self.status.state = "cancelling..."
        elif self.agent is not None:
            self.agent.kill()
            self.status.state = "stopping the agent..."

    async def action_new_chat(self) -> None:
        await self.run_command("/new")

    def action_open_screen(self, name: str) -> None:
        from .screens import MemfsScreen, ModulesScreen, TopScreen

        if self.kernel is None:
            self.notify("the kernel is still booting", severity="warning")
            return
        screens = {"top": lambda: TopScreen(self.kernel, self.agents), "modules": lambda: ModulesScreen(self.kernel),
                   "mem": lambda: MemfsScreen(self.kernel)}
        if type(self.screen).__name__.lower().startswith(name):
            return
        self.push_screen(screens[name]())

    # -- agents ------------------------------------------------------------------------------------

    async def start_agent(self, goal: str) -> None:
        if self.agent is not None:
            await self.chat_log.add("an agent is already running: esc stops it", "error")
            return
        await self.chat_log.add(f"**agent**: {goal}", "info")
        self.status.state = "agent working... (esc stops it)"
        self._agent(goal)

    @work(thread=True, group="agent")
    def _agent(self, goal: str) -> None:
        assert self.conv is not None
        try:
            proc = self.kernel.spawn(goal, model=self.conv.setting("model"), adapter=self.conv.adapter,
                                     owner="shell", approve=self.approve)
        except LlmosError as exc:
            self.post_message(self.AgentEvent("error", str(exc)))
            self.post_message(self.AgentEvent("done"))
            return
        self.agent, self.agents[str(proc.pid)] = proc, proc
        try:
            relay(proc, lambda *ev: self.post_message(self.AgentEvent(*ev)))
        finally:
            self.agents.pop(str(proc.pid), None)

    @on(AgentEvent)
    async def _agent_event(self, event: AgentEvent) -> None:
        await self._agent_view.show(self.chat_log, event.kind, event.text, event.step, event.data)
        if event.kind == "answer" and self.conv is not None:
            self.conv.append("assistant", event.text)
        elif event.kind == "done":
            self.agent = None
            self.status.state = f"agent finished ({event.text or 'done'})"

    # -- tool approvals ----------------------------------------------------------------------------

    def approve(self, tool: str, missing: frozenset[str]) -> str:
        """The kernel's Approver, called from a worker thread: ask in a modal and wait for the answer."""
        from .screens.approval import ask_approval

        return ask_approval(self, tool, missing)


def main(home: str | None = None, model: str | None = None, resume: bool = True, local: bool = False) -> None:
    ShellApp(home=home, model=model, resume=resume, local=local).run()
