"""The kernel: the public, in-process API of llmos, and the facade that wires its parts.

`llmos.boot(config) -> Kernel`. Every front end (CLI, shell, HTTP server, agents) goes through these
methods; none reaches into engines or drivers directly. Sync and async variants share one path:
`submit()` validates, tokenizes and queues a request and returns a `RequestHandle`.

The parts (sched/, models/, modules/, proc/, tools/, memfs/) hold the logic; this module connects
them. proc/ and tools/ get the kernel as a `KernelPort` (port.py): no part imports this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .alerts.calls import AlertCalls
from .config import Config, PluginTable, parse_keep_alive
from .errors import InvalidRequestError, KernelShutdownError, PromptTooLongError
from .lib.masking import Redactors, redact_messages, redact_text
from .lib.private import private_home
from .models.loaded import LoadProgress, ModelManager
from .models.registry import ModelRegistry, ModelSpec
from .memfs.calls import MemCalls
from .modules.calls import ModuleCalls
from .modules.store import ModuleStore
from .modules.table import ModuleTable
from .proc.agents import Process, ProcessTable
from .proc.sessions import SessionStore
from .sched.handle import Completion, RequestHandle, acancel_on_close, cancel_on_close
from .sched.request import (Priority, PromptEnvelope, Request, check_input, check_prompt, check_rag_k,
                            next_request_id, parse_sampling, validate_messages)
from .tenants.scope import TenantView
from .tenants.table import TenantTable
from .tenants.tenant import Tenant
from .tools.job_calls import JobCalls
from .tools.toolbox import ToolBox

if TYPE_CHECKING:
    from .memfs.embedding import EmbeddingService

log = logging.getLogger("llmos.kernel")


class Kernel(ModuleCalls, MemCalls, AlertCalls, JobCalls):
    def __init__(self, config: Config | None = None, *, plugins=None,
                 progress: LoadProgress | None = None, load_entrypoints: bool = True) -> None:
        from llmos.drivers.embedder_select import resolve_backend
        from llmos.plugins.manager import PluginManager

        self.config = config or Config.load()
        self.plugins = plugins or PluginManager(load_entrypoints=load_entrypoints)
        self.config.check_tables({t.name: t.keys for t in self.plugins.collect("register_config", PluginTable)
                                  .values()})  # an unknown key or table in llmos.toml stops the boot
        resolve_backend(self.config.embedder_backend)  # ... and so does an embedder this machine can't run
        private_home(self.config.home)  # conversations, keys, memory: no other user reads them
        self.registry = ModelRegistry(self.config.home, self.config.models)
        self.drivers = self.plugins.collect_drivers()
        self._redactors = Redactors(self.plugins)
        self.tools = ToolBox(self, self.plugins, self.config)
        self._models = ModelManager(self.config, self.registry, self.drivers, progress, on_finish=self._on_finish)
        self.module_store = ModuleStore(self.config.home, self.registry)
        self.modules = ModuleTable(self.module_store, self._models, self.config.max_loaded_modules, self.cancel)
        self._models.on_unload = self.modules.forget_engine
        self._closed = False
        self._mem = None
        self._embedding: EmbeddingService | None = None
        self._jobs: list = []  # background jobs (tools/job_calls.py)
        self._sessions: SessionStore | None = None
        self.tenants = TenantTable(audit=self.tools.audit.record)
        self.processes = ProcessTable(self, self.tools.all, self.config.default_model)
        self._lock = threading.RLock()
        self.started = time.monotonic()
        self._start_alerts()
        self.plugins.hook.kernel_booted(kernel=self)

    # -- models ------------------------------------------------------------------------------------

    def models(self) -> list[ModelSpec]:
        return self.registry.list()

    def models_info(self) -> list[dict[str, Any]]:
        """Each resolvable model as a dict (name, format, drivers, path, size, default sampling, loaded)."""
        loaded = {m.spec.name: m.driver_name for m in self._models.loaded()}
        out = []
        for spec in self.models():
            row = spec.as_dict(self._models.drivers_for(spec))
            row["loaded_on"] = loaded.get(spec.name)
            out.append(row)
        return out

    def load(self, model: str | None = None, *, driver: str | None = None):
        """Load a model now (otherwise it loads on first request)."""
        self._check_open()
        return self._models.get(model or self.config.default_model, driver)

    def unload(self, model: str) -> int:
        return self._models.unload(model)

    def tokenize(self, text: str, *, model: str | None = None, tenant: Tenant | None = None) -> list[int]:
        """`text` as a local `model`'s token ids, as a prompt is tokenized (special tokens such as BOS
        included); a `tenant` over its limits is refused first, as for a request."""
        self._check_open()
        check_prompt(text, param="text", allow_empty=True)
        if tenant is not None:
            self.tenants.check(tenant)
        spec = self.registry.resolve(model or self.config.default_model)
        if spec.format == "openai":
            raise InvalidRequestError(f"{spec.name} is served by remote nodes: it tokenizes there, not here",
                                      param="model")
        loaded = self._models.get(spec.name, pin=True)
        try:
            return loaded.driver.tokenize(text)
        finally:
            self._models.unpin(loaded)

    # -- requests ----------------------------------------------------------------------------------

    def submit(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        model: str | None = None,
        driver: str | None = None,
        adapter: str | None = None,
        rag: str | None = None,
        rag_k: int = 6,
        priority: Priority | int | str | None = None,
        owner: str = "default",
        tenant: Tenant | None = None,
        user: str | None = None,
        timeout: float | None = None,
        keep_alive: float | str | None = None,
        session: str | None = None,
        **sampling: Any,
    ) -> RequestHandle:
        """Queue a request and return its handle at once (tokens stream as they are produced).

        Unset sampling fields take the model's defaults (`models_info()`); `temperature=0` is greedy.
        `keep_alive` (seconds or "5m"; 0: unload after this request; negative: never): idle residency.
        `tenant` (kernel/tenants): the request is its tenant's (`owner` is then the tenant's name), runs at
        most at its class's priority and is held to its quotas; `user` is a free label shown in ps.
        `session` (a chat session's name or id, the tenant's own): the turn's KV is saved for the next turn.
        `rag` (a memfs directory): at most `rag_k` of its passages answer, listed back as `sources`."""
        self._check_open()
        params = parse_sampling(sampling)
        check_rag_k(rag_k)
        cache_key = None if session is None else self.sessions.cache_key(
            session, None if tenant is None or tenant.admin else tenant.name)
        if tenant is not None:
            owner, prio = tenant.name, tenant.priority(priority)
            self.tenants.check(tenant)  # over its limits: refused before any model load, RAG search or adapter
        else:
            prio = Priority.NORMAL if priority is None else Priority.parse(priority)
        who = _Who(owner, tenant, user, cache_key)
        chat = check_input(prompt, messages, timeout, self.config.system_prompt)
        if adapter is not None:
            manifest = self.module_store.get(adapter)  # UnknownAdapterError lists what is installed
            model = model or manifest.base_model
            self.module_store.check_base(manifest, self.registry.resolve(model))
            driver = self.modules.driver_for(manifest, driver)
        if params.json_schema is not None:  # route to a driver that can constrain output, or refuse now
            spec = self.registry.resolve(model or self.config.default_model)
            driver = self._models.json_schema_driver(spec, driver, params.json_schema)
        keep = None if keep_alive is None else parse_keep_alive(keep_alive)
        loaded = self._models.get(model or self.config.default_model, driver, pin=True, keep_alive=keep)
        try:  # pinned: the keep_alive reaper leaves it loaded until the request is queued on it
            if params.prompt_logprobs and not loaded.driver.supports_prompt_logprobs:
                raise InvalidRequestError(f"the {loaded.driver_name} driver cannot score prompts: use a local "
                                          "model (llamacpp or torch driver)", param="prompt_logprobs")
            return self._submit_to(loaded, prompt, chat, params, prio, who, adapter, (rag, rag_k), timeout)
        finally:
            self._models.unpin(loaded)

    def _submit_to(self, loaded, prompt, chat, params, prio, who, adapter, rag, timeout) -> RequestHandle:
        params = params.with_defaults(loaded.spec.sampling_defaults())  # unset fields: the model's defaults
        sources: list[str] = []
        if rag[0] is not None:  # before the hook: plugins (redaction) see, and mask, the passages too
            from .memfs.rag import add_passages

            chat, sources = add_passages(self.mem, loaded, prompt, chat, params.max_tokens, self.config.system_prompt,
                                         *rag)
            prompt = None
        prompt, chat = self._prepare_prompt(prompt, chat, loaded.spec.name, who.owner, adapter)
        rid = next_request_id()
        if adapter is not None:  # loads it if needed and holds a reference for this request
            self.modules.insmod(adapter, driver=loaded.driver_name, user=rid)
        try:
            return self._submit(rid, loaded, prompt, chat, params, prio, who, adapter, sources, timeout)
        except BaseException:
            self.modules.release(rid)
            raise

    def _submit(self, rid, loaded, prompt, chat, params, prio, who, adapter, sources, timeout) -> RequestHandle:
        drv = loaded.driver
        tokens = drv.tokenize_chat(chat) if chat is not None else drv.tokenize(prompt)
        if not tokens:
            raise InvalidRequestError("prompt is empty after tokenization: give some text", param="prompt")
        limit = loaded.info.context_length
        if len(tokens) + params.max_tokens > limit:
            raise PromptTooLongError(len(tokens), params.max_tokens, limit)
        exclusive = adapter is not None and (not drv.mixed_adapters or self.module_store.get(adapter).method
                                             not in drv.mixable_methods)
        request = Request(
            prompt_token_ids=tokens, sampling=params, model=loaded.spec.name, adapter=adapter,
            exclusive_adapter=exclusive,
            priority=prio, owner=who.owner, user=who.user, prompt=prompt, messages=chat,
            deadline=None if timeout is None else time.monotonic() + timeout, sources=sources, request_id=rid,
            cache_key=who.cache_key, cache_salt=None if who.tenant is None else who.tenant.name,
        )
        handle = RequestHandle(request, self.cancel)
        if who.tenant is not None:  # its quota and concurrency (QuotaExceededError: 429)
            self.tenants.admit(who.tenant, rid, len(tokens), params.max_tokens)
        try:
            loaded.engine.submit(request, handle)
        except BaseException:
            self.tenants.abandon(rid)
            raise
        self.plugins.call_each("request_submitted", request={
            "id": request.request_id, "owner": who.owner, "model": request.model, "adapter": adapter,
            "priority": prio.name.lower(), "prompt_tokens": len(tokens)})
        return handle

    def _prepare_prompt(self, prompt, chat, model: str, owner: str, adapter: str | None):
        """Let plugins inspect or rewrite the prompt (the prepare_prompt hook); a failing plugin is
        reported and the prompt goes on unchanged but masked (a raising plugin must not skip redaction,
        which runs as a wrapper of that hook)."""
        envelope = PromptEnvelope(text=prompt, messages=[dict(m) for m in chat] if chat else None, model=model,
                                  owner=owner, adapter=adapter)
        try:
            self.plugins.hook.prepare_prompt(prompt=envelope)
        except Exception as exc:  # noqa: BLE001
            self.plugins.report_failure("prepare_prompt", exc)
            masked = redact_text(prompt, self.redact) if prompt is not None else None
            return masked, redact_messages([dict(m) for m in chat], self.redact) if chat else chat
        messages = validate_messages(envelope.messages) if envelope.messages is not None else None
        if envelope.text is not None:
            check_prompt(envelope.text)
        return envelope.text, messages

    def _on_finish(self, request: Request) -> None:
        self.tenants.finished(request)
        self._signals.record(request)
        self._models.poke()  # the keep_alive reaper looks again (0: unload right after use)
        if request.adapter is not None:
            self.modules.release(request.request_id)
        self.plugins.call_each("request_finished", request={
            "id": request.request_id, "owner": request.owner, "model": request.model, "adapter": request.adapter,
            "status": request.status.name.lower(), "error": request.error, "metrics": request.metrics.as_dict()})

    def generate(self, prompt: str, **kwargs: Any) -> Completion:
        """Complete `prompt` and wait for the whole answer."""
        return self.submit(prompt, **kwargs).result()

    def chat(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> Completion:
        """Answer chat `messages` (rendered with the model's chat template)."""
        return self.submit(messages=messages, **kwargs).result()

    def stream(self, prompt: str | None = None, **kwargs: Any) -> Iterator[str]:
        """Yield the answer's text as it is produced; closing the iterator cancels the request.

        The request is validated and queued before this returns, so bad input raises here."""
        return cancel_on_close(self.submit(prompt, **kwargs))

    async def agenerate(self, prompt: str, **kwargs: Any) -> Completion:
        return await self.submit(prompt, **kwargs).aresult()

    async def achat(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> Completion:
        return await self.submit(messages=messages, **kwargs).aresult()

    def astream(self, prompt: str | None = None, **kwargs: Any) -> AsyncIterator[str]:
        """Async twin of `stream` (`async for chunk in kernel.astream(...)`)."""
        return acancel_on_close(self.submit(prompt, **kwargs))

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting or running request, or kill an agent process, by id; False if it is
        unknown or already finished."""
        proc = self.processes.get(request_id)
        if proc is not None:
            if proc.state.finished:
                return False
            proc.kill()
            return True
        return any(m.engine.cancel(request_id) for m in self._models.loaded())

    def tenants_info(self) -> list[dict[str, Any]]:
        """Per tenant (those with keys, and any that ran here): limits, usage, queued and running now."""
        from .tenants.keys import KeyStore

        return self.tenants.rows(self.ps(), KeyStore(self.config.home).tenants())

    # -- agents and sessions (proc/agents.py, proc/sessions.py) --------------------------------------

    def spawn(self, goal: str | None = None, **options: Any) -> Process:
        """Start an agent process: `spawn(goal, tools=None, model=None, adapter=None, max_steps=8,
        max_tokens=2048, owner="agent", priority="normal", approve=None, session=None)`; `session`
        resumes a stored agent session. Returns the `Process` handle (events, wait, kill)."""
        self._check_open()
        return self.processes.spawn(goal, **options)

    @property
    def sessions(self) -> SessionStore:
        """Chat sessions and agent runs stored in `$LLMOS_HOME/sessions.db`."""
        with self._lock:
            if self._sessions is None:
                self._sessions = SessionStore(self.config.home / "sessions.db", redact=self.redact,
                                              on_delete=self._forget_session_kv, **self.config.retention("sessions"))
            return self._sessions

    def _forget_session_kv(self, keys: list[str]) -> None:
        from llmos.drivers.session_kv import forget

        forget(self.config.kv_dir, keys)

    def redact(self, text: str) -> str:
        """`text` through every registered redactor (the `register_redactors` hook)."""
        return self._redactors(text)

    # -- plugins, tools, tasks -----------------------------------------------------------------------

    def plugins_info(self) -> list[dict[str, Any]]:
        """Loaded plugins: name, version, source, hooks, error (None when it loaded)."""
        return self.plugins.info()

    def call_tool(self, name: str, args: Any, *, tenant: Tenant | None = None, **kwargs: Any):
        """Validate, authorize, run and audit a tool call (see tools/toolbox.py); for a `tenant` that is no
        admin, a tool that takes the kernel gets it as that tenant sees it (tenants/scope.py)."""
        view = TenantView(self, tenant) if tenant is not None and not tenant.admin else None
        return self.tools.call(name, args, kernel=view, **kwargs)

    def run_task(self, name: str, params: Any) -> Any:
        """Run a registered task with validated parameters; returns its JSON-serialisable result."""
        return self.tools.run_task(name, params)

    # -- introspection -----------------------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        """Live requests of every loaded model, most urgent first, then queued embedding work."""
        rows = self._models.ps()
        if self._embedding is not None:
            rows += self._embedding.ps()
        return rows + [p.as_row() for p in self.processes.list() if not p.state.finished]

    def engines(self) -> list[dict[str, Any]]:
        """Loaded models with their driver, queue and step figures."""
        return self._models.engines()

    # -- lifecycle ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KernelShutdownError("the kernel is shut down: boot a new one")

    def shutdown(self) -> None:
        """Cancel in-flight requests, stop every engine and unload every model. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.plugins.hook.kernel_shutdown(kernel=self)
        self._alerts.stop()
        self.processes.kill_all()
        for job in self._jobs:
            job.cancel()
        self._models.shutdown()
        self.tools.close()
        if self._mem is not None:
            self._mem.close()
        if self._sessions is not None:
            self._sessions.close()

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def boot(config: Config | None = None, **overrides: Any) -> Kernel:
    """Start a kernel: `llmos.boot()` uses `$LLMOS_HOME/llmos.toml`; keyword overrides win."""
    kernel_kwargs = {k: overrides.pop(k) for k in ("plugins", "progress", "load_entrypoints") if k in overrides}
    cfg = config.with_overrides(**overrides) if config is not None else Config.load(**overrides)
    return Kernel(cfg, **kernel_kwargs)


class _Who(NamedTuple):
    owner: str
    tenant: Tenant | None
    user: str | None
    cache_key: str | None = None  # the chat session's, when the request is one of its turns
