"""Agent processes: a goal, a model, a tool set and budgets, run as a loop model -> tool -> model.

Boundaries: an agent talks to the kernel only through its `KernelPort` (`submit`, `call_tool`,
`sessions`; kernel/port.py), so its LLM calls go through the scheduler like any request (batched with other agents'
while those wait on tools) and its tool calls through capabilities and the audit log. Each process
runs on its own thread; `Process` is the handle (state, events, kill).

One step is one decision in up to two LLM calls: which tool (or "answer"), then that tool's arguments
under its own parameter schema (or the answer in free text). Each JSON reply is constrained where the
driver can (llama.cpp grammar, llguidance on torch) and validated everywhere; an invalid reply is shown back to the model
with the error and retried as the next step. The same call twice in a row is not run again: the agent
answers instead. Every message is stored in the process's session (kind "agent"), with tool calls in
OpenAI's `tool_calls` format.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError, LlmosError, RequestCancelledError
from ..sched.request import Priority
from .process_state import AgentEvent, ProcessState
from .structured import submit_json
from .tool_calling import (ANSWER, Function, bounded, InvalidToolCall, arguments_prompt, choice_prompt, choice_schema,
                           condensed, parse_arguments, parse_choice)

if TYPE_CHECKING:
    from ..port import KernelPort
    from .sessions import Session

#: the tools an agent may use, by name (the toolbox's `all`)
ToolCatalog = Callable[[], dict[str, Any]]

#: tokens one LLM call may generate (a choice, arguments or the answer), within the token budget
STEP_MAX_TOKENS = 256
FINAL = "Answer the user's goal. Use the tool results above when there are any."

class _Killed(Exception):
    """The LLM call in flight was cancelled (the process is being killed)."""


class Process:
    def __init__(self, kernel: "KernelPort", session: "Session", *, catalog: ToolCatalog, default_model: str,
                 tools: list[str], model: str | None, adapter: str | None, max_steps: int, max_tokens: int,
                 owner: str, priority: Priority, approve: Callable | None, tool_choice: str = "first",
                 tenant: Any = None) -> None:
        self.pid = f"agent-{secrets.token_hex(8)}"  # unguessable: an id is enough to kill it
        self.kernel, self.session = kernel, session
        self._catalog, self.default_model = catalog, default_model
        self.tools, self.model, self.adapter = tools, model, adapter
        self.max_steps, self.max_tokens = max_steps, max_tokens
        self.owner, self.priority, self.approve = owner, priority, approve
        self.tenant = tenant  # its requests are held to this tenant's quotas (kernel/tenants)
        self.tool_choice = tool_choice
        self.state = ProcessState.STARTING
        self.step = 0
        self.tokens = 0
        self.answer: str | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self._events: list[AgentEvent] = []
        self._cond = threading.Condition()
        self._killed = threading.Event()
        self._handle = None
        self._thread = threading.Thread(target=self._main, name=f"llmos-{self.pid}", daemon=True)

    # -- the handle --------------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.session.id

    def events(self, timeout: float | None = None) -> Iterator[AgentEvent]:
        """Every event from the start, then new ones as they happen, until the process ends."""
        i = 0
        while True:
            with self._cond:
                if i >= len(self._events) and not self.state.finished:
                    self._cond.wait_for(lambda: i < len(self._events) or self.state.finished, timeout)  # noqa: B023
                if i >= len(self._events):
                    if self.state.finished:
                        return
                    raise TimeoutError(f"{self.pid}: no event within {timeout}s")
                event = self._events[i]
            i += 1
            yield event

    def events_since(self, index: int, timeout: float | None = None) -> list[AgentEvent]:
        """The events after the first `index`, waiting up to `timeout` for one ([]: none yet, or it ended)."""
        with self._cond:
            self._cond.wait_for(lambda: index < len(self._events) or self.state.finished, timeout)
            return self._events[index:]

    def post(self, kind: str, text: str = "", **data: Any) -> None:
        """Add an event from outside the loop (the HTTP server's approval questions)."""
        self._emit(kind, text, **data)

    def history(self) -> list[AgentEvent]:
        """The events so far (does not wait)."""
        with self._cond:
            return list(self._events)

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def kill(self) -> None:
        """Cancel the LLM call in flight (its slot is freed) and stop waiting on a running tool."""
        self._killed.set()
        handle = self._handle
        if handle is not None:
            handle.cancel()
        with self._cond:
            self._cond.notify_all()

    def as_row(self) -> dict[str, Any]:
        return {"id": self.pid, "kind": "agent", "owner": self.owner, "model": self.model or
                self.default_model, "driver": "agent", "adapter": self.adapter,
                "state": self.state.name.lower(), "priority": self.priority.name.lower(), "step": self.step,
                "max_steps": self.max_steps, "prompt_tokens": None, "output_tokens": self.tokens,
                "age_s": time.monotonic() - self.started, "queue_wait_s": None, "ttft_s": None,
                "tokens_per_s": None, "session": self.session.id}

    # -- the loop (process thread) -------------------------------------------------------------------

    def _emit(self, kind: str, text: str = "", **data: Any) -> None:
        with self._cond:
            self._events.append(AgentEvent(kind, self.step, text, data))
            self._cond.notify_all()

    def _end(self, state: ProcessState, *, answer: str | None = None, error: str | None = None) -> None:
        self.answer, self.error = answer, error
        self.session.set_state(state.name.lower())
        if error:
            self._emit("error", error)
        with self._cond:
            self.state = state
            self._cond.notify_all()

    def _main(self) -> None:
        try:
            self._loop()
        except LlmosError as exc:
            self._end(ProcessState.KILLED if self._killed.is_set() else ProcessState.FAILED, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - an agent's bug ends that agent, never the kernel
            self._end(ProcessState.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        # 1. The tool set; the conversation so far (a resumed session brings its history).
        tools = self._catalog()
        functions = [Function(t.name, t.description, t.schema) for t in (tools[name] for name in self.tools)]
        messages = self.session.messages
        self.session.set_state("running")
        while not self._killed.is_set():
            # 2. Budgets.
            if self.step >= self.max_steps:
                return self._end(ProcessState.OUT_OF_BUDGET, error=f"step budget of {self.max_steps} exhausted")
            if self.tokens >= self.max_tokens:
                return self._end(ProcessState.OUT_OF_BUDGET, error=f"token budget of {self.max_tokens} exhausted")
            self.step += 1
            self._emit("step")
            self.state = ProcessState.THINKING
            # 3. Choose: a tool or the answer (small models rarely pick a tool unprompted: with
            #    tool_choice "first", the first step must call one).
            may_answer = not functions or self.tool_choice == "auto" or any(m.get("tool_calls") for m in messages)
            try:
                name = ANSWER if not functions else parse_choice(
                    self._ask(messages, choice_prompt(functions, may_answer=may_answer),
                              choice_schema(functions, may_answer=may_answer)), functions, may_answer=may_answer)
                if name != ANSWER:  # 4b. The chosen tool's arguments, under its own schema.
                    fn = next(f for f in functions if f.name == name)
                    call, args = parse_arguments(self._ask(messages, arguments_prompt(fn), bounded(fn.parameters)), fn)
                    if _repeats(messages, call):  # the same call again adds nothing: answer instead
                        self._emit("error", f"{name} was just called with the same arguments: answering")
                        name = ANSWER
                if name == ANSWER:  # 4a. The answer, in free text, ends the process.
                    answer = self._ask(messages, FINAL, None).strip()
                    self._record(messages, {"role": "assistant", "content": answer})
                    self._emit("answer", answer)
                    return self._end(ProcessState.FINISHED, answer=answer)
            except InvalidToolCall as exc:  # shown back to the model; the next step retries
                self._emit("error", f"invalid reply, retrying: {exc}")
                self._record(messages, {"role": "user", "content": f"That reply was invalid: {exc}."})
                continue
            except _Killed:
                break
            # 5. Run the tool (capabilities and audit in call_tool) and give the model its result.
            self._record(messages, {"role": "assistant", "content": None, "tool_calls": [call]})
            self._emit("tool_call", name, name=name, arguments=args)
            outcome = self._run_tool(name, args)
            if outcome is None:
                break
            result, code = outcome
            self._record(messages, {"role": "tool", "tool_call_id": call["id"], "content": result})
            self._emit("tool_result", result, name=name, ok=code is None, **({"code": code} if code else {}))
        self._end(ProcessState.KILLED, error="killed")

    def _record(self, messages: list[dict[str, Any]], message: dict[str, Any]) -> None:
        messages.append(message)
        self.session.append(message)

    def _ask(self, messages: list[dict[str, Any]], instruction: str, schema: dict[str, Any] | None) -> str:
        """One LLM call: `instruction` as the system message, then the conversation; streamed out as
        token events; constrained to `schema` where the driver can (elsewhere the caller validates)."""
        chat = [{"role": "system", "content": instruction},
                *condensed(messages)]
        kwargs = dict(messages=chat, model=self.model, adapter=self.adapter, owner=self.owner,
                      priority=self.priority, **({"tenant": self.tenant} if self.tenant is not None else {}),
                      max_tokens=max(1, min(STEP_MAX_TOKENS, self.max_tokens - self.tokens)),
                      temperature=0.0)
        handle = submit_json(self.kernel, schema, **kwargs) if schema is not None else self.kernel.submit(**kwargs)
        self._handle = handle
        if self._killed.is_set():
            handle.cancel()
        try:
            for delta in handle.stream():
                self._emit("token", delta)
            completion = handle.result()
        except RequestCancelledError:
            raise _Killed from None
        finally:
            self._handle = None
        self.tokens += completion.usage["completion_tokens"]
        return completion.text

    def _run_tool(self, name: str, args: dict[str, Any]) -> tuple[str, str | None] | None:
        """(text for the model, error code or None); None when killed. Whatever the call raises
        becomes an error the model reads: the process never waits on a call that died."""
        self.state = ProcessState.WAITING_TOOL
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                r = self.kernel.call_tool(name, args, owner=self.owner, approve=self.approve,
                                          **({"tenant": self.tenant} if self.tenant is not None else {}))
                box["out"] = ((json.dumps(r.value, default=str, ensure_ascii=False), None) if r.ok
                              else (f"error: {r.error}", r.code))
            except LlmosError as exc:  # denied, invalid arguments: the model reads why
                box["out"] = (f"error: {exc}", exc.code)
            except BaseException as exc:  # noqa: BLE001 - a bug in the tool path must not hang the agent
                box["out"] = (f"error: {type(exc).__name__}: {exc}", "tool_failed")
            finally:
                with self._cond:
                    box.setdefault("out", ("error: the tool call ended without a result", "tool_failed"))
                    self._cond.notify_all()

        threading.Thread(target=call, name=f"llmos-{self.pid}-tool", daemon=True).start()
        with self._cond:
            self._cond.wait_for(lambda: "out" in box or self._killed.is_set())
        return None if self._killed.is_set() else box["out"]


def _repeats(messages: list[dict[str, Any]], call: dict[str, Any]) -> bool:
    last = next((m["tool_calls"][0] for m in reversed(messages) if m.get("tool_calls")), None)
    return last is not None and last["function"]["name"] == call["function"]["name"] and \
        json.loads(last["function"]["arguments"]) == json.loads(call["function"]["arguments"])


class ProcessTable:
    """The kernel's agents: spawn, list, find; finished processes stay listed for `KEEP_S`."""

    KEEP_S = 60.0

    def __init__(self, kernel: "KernelPort", catalog: ToolCatalog, default_model: str) -> None:
        self.kernel, self.catalog, self.default_model = kernel, catalog, default_model
        self._procs: dict[str, Process] = {}
        self._lock = threading.Lock()

    def spawn(self, goal: str | None, *, tools: list[str] | None = None, model: str | None = None,
              adapter: str | None = None, max_steps: int = 8, max_tokens: int = 2048, owner: str = "agent",
              priority: Priority | int | str | None = None, approve: Callable | None = None,
              session: str | None = None, tool_choice: str = "first", tenant: Any = None) -> Process:
        # 1. Validate everything before anything starts or is stored.
        for name, value, lo in (("max_steps", max_steps, 1), ("max_tokens", max_tokens, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise InvalidRequestError(f"{name} must be an integer >= {lo}, got {value!r}", param=name)
        if tenant is not None:  # runs as its tenant: the tenant's name, its class caps the priority
            owner, prio = tenant.name, tenant.priority(priority)
        else:
            prio = Priority.NORMAL if priority is None else Priority.parse(priority)
        if tool_choice not in ("first", "auto"):
            raise InvalidRequestError(f"tool_choice must be first (the first step calls a tool) or auto, got "
                                      f"{tool_choice!r}", param="tool_choice")
        available = self.catalog()
        tools = list(available) if tools is None else list(tools)
        unknown = [t for t in tools if t not in available]
        if unknown:
            raise InvalidRequestError(f"unknown tool(s) {unknown}: available are {sorted(available)}", param="tools")
        if goal is not None and (not isinstance(goal, str) or not goal.strip()):
            raise InvalidRequestError("the goal must be a non-empty string", param="goal")
        # 2. A new agent session, or an earlier one resumed (its messages are the context).
        store = self.kernel.sessions
        settings = {"tools": tools, "max_steps": max_steps, "max_tokens": max_tokens}
        if session is not None:
            stored = store.get(session)
            if stored.state == "running" and any(p.session.id == stored.id and not p.state.finished
                                                 for p in self.list()):
                raise InvalidRequestError(f"session {stored.id} is already running", param="session")
            stored.update(settings=settings, **({"model": model} if model else {}))
        elif goal is None:
            raise InvalidRequestError("give a goal (or a session to resume)", param="goal")
        else:
            stored = store.create(kind="agent", model=model, adapter=adapter, settings=settings, state="starting",
                                  title=goal, owner=owner if tenant is not None else "owner")
        if goal is not None:
            stored.append({"role": "user", "content": goal})
        proc = Process(self.kernel, stored, catalog=self.catalog, default_model=self.default_model, tools=tools,
                       model=model or stored.model, adapter=adapter, max_steps=max_steps, max_tokens=max_tokens,
                       owner=owner, priority=prio, approve=approve, tool_choice=tool_choice, tenant=tenant)
        with self._lock:
            self._prune()
            self._procs[proc.pid] = proc
        proc._thread.start()
        return proc

    def _prune(self) -> None:
        now = time.monotonic()
        for pid, p in list(self._procs.items()):
            if p.state.finished and now - p.started > self.KEEP_S:
                del self._procs[pid]

    def get(self, pid: str) -> Process | None:
        with self._lock:
            return self._procs.get(pid)

    def list(self) -> list[Process]:
        with self._lock:
            return list(self._procs.values())

    def kill_all(self) -> None:
        for p in self.list():
            p.kill()
