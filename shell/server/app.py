"""The OpenAI-compatible HTTP API over a running kernel (FastAPI).

Endpoints: POST /v1/chat/completions and /v1/completions (SSE streaming or not), POST /v1/embeddings
(the memfs embedder), GET /v1/models (models, and installed adapters as `base:adapter`), GET /health,
GET /metrics (Prometheus), llmos extras under /llmos/ (extras.py: ps, kill, modules, memfs) and the
resident kernel's /llmos/status and /llmos/shutdown (status.py).
Before any endpoint, security.py checks Host, Origin, the API key and the body size. Errors use
OpenAI's error shape with the matching status: 400 bad parameter (named) or Host, 401 bad/missing key,
403 a web page's Origin, 404 unknown model or adapter (only served names: never a path on this
machine), 408 a stalled body, 413 body or prompt too long, 429 queue full (Retry-After), 503 shutting
down. A client that disconnects cancels its request in the kernel. The server holds no model logic:
it only calls the kernel's public API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmos.kernel.errors import InvalidRequestError, LlmosError, UnknownModelError
from llmos.kernel.tenants.keys import KeyStore

from .clients import ClientLabels, label_of
from .errors import error_response, json_error
from .admin_routes import admin_router
from .extras import MAX_AGENTS, extras_router
from .mem_routes import mem_router
from .metrics import Metrics
from .schemas import MAX_EMBEDDING_CHARS, MAX_EMBEDDING_INPUTS, ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .security import HEADER_TIMEOUT_S, MAX_BODY_BYTES, Guard, is_owner, tenant_of
from llmos.kernel.tenants.scope import ScopedMem
from .session_routes import session_router
from .sse import DONE, KEEPALIVE, KEEPALIVE_S, sse
from .status import status_router
from .tenancy import own_session
from .tool_calls import parse_answer, render_messages, response_schema, tool_constraint

EMBEDDING_MODEL = "all-minilm-l6-v2"


def split_model(model: str) -> tuple[str, str | None]:
    """`base:adapter` -> (base, adapter); a bare name has no adapter (paths may contain ':' only once)."""
    base, sep, adapter = model.rpartition(":")
    return (base, adapter) if sep and base and adapter and "/" not in adapter else (model, None)


def create_app(kernel, *, api_key: str | None = None, allowed_hosts: Iterable[str] = (),
               allowed_origins: Iterable[str] = (), public_metrics: bool = False, max_body: int = MAX_BODY_BYTES,
               read_timeout: float = HEADER_TIMEOUT_S, max_agents: int = MAX_AGENTS,
               owner_socket: str | None = None) -> FastAPI:
    """The API over `kernel`; the keyword arguments are security.py's rules (Host, Origin, key, body, and
    the Unix socket whose clients are the owner)."""
    allowed_origins = tuple(allowed_origins)
    app = FastAPI(title="llmos", version=getattr(__import__("llmos"), "__version__", "0"),
                  description="OpenAI-compatible API of an llmos kernel.")
    metrics = Metrics(kernel)
    keys = KeyStore(kernel.config.home)
    app.state.kernel = kernel
    if allowed_origins:  # CORS only where asked for, inside the guard (which refuses other origins first)
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(Guard, api_key=api_key, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins,
                       public_metrics=public_metrics, max_body=max_body, read_timeout=read_timeout,
                       owner_socket=owner_socket, keys=keys, on_deny=kernel.tenants.deny)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        message = f"{param}: {first['msg']}" if param else f"the body must be a JSON object: {first['msg']}"
        return json_error(400, message, "invalid_request_error", param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):  # unparsable body, unknown route, ...
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return json_error(exc.status_code, str(exc.detail), kind, None, None, headers=getattr(exc, "headers", None))

    @app.exception_handler(LlmosError)
    async def llmos_error(_request: Request, exc: LlmosError):
        return error_response(exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: still the OpenAI shape, no internals
        logging.getLogger("llmos.server").error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return json_error(500, f"internal error ({type(exc).__name__}); the server log has the details",
                          "server_error", None, "internal_error")

    labels = ClientLabels()
    app.include_router(extras_router(kernel, max_agents=max_agents, labels=labels, keys=keys))
    app.include_router(session_router(kernel))
    app.include_router(mem_router(kernel))
    app.include_router(admin_router(kernel))
    app.include_router(status_router(kernel))

    @app.get("/health")
    async def health() -> dict[str, Any]:  # `version`: clients check it (shell/daemon.py check_version)
        return {"status": "ok", "version": app.version, "models_loaded": [e["model"] for e in kernel.engines()]}

    @app.get("/metrics")
    async def scrape() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        now = int(time.time())
        data = [{"id": m.name, "object": "model", "created": now, "owned_by": "llmos"} for m in kernel.models()]
        data += [{"id": f"{m.base_model}:{m.name}", "object": "model", "created": int(m.created),
                  "owned_by": "llmos", "parent": m.base_model} for m in kernel.module_store.list()]
        data.append({"id": EMBEDDING_MODEL, "object": "model", "created": now, "owned_by": "llmos"})
        return {"object": "list", "data": data}

    async def run(request: Request, body, **submit: Any):
        if body.n != 1:
            raise InvalidRequestError("only n=1 is supported", param="n")
        model, adapter = split_model(body.model)

        owner, tenant = is_owner(request), tenant_of(request)
        extensions = body.extensions(tenant, request.headers.get("x-llmos-priority"), audit=kernel.tenants.deny)
        if "session" in extensions:  # the tenant's own session (another's is refused, audited, as unknown)
            await asyncio.to_thread(own_session, kernel, request, extensions["session"], "continue")
        if "rag" in extensions:  # passages the tenant may read only
            extensions["rag"] = ScopedMem(kernel.mem, tenant, kernel.tenants).readable(extensions["rag"], "rag", "rag")

        def submit_named():  # over HTTP a model is a served name, never a path on this machine (but the owner's)
            kernel.registry.resolve(model, allow_paths=owner)
            return kernel.submit(model=model, adapter=adapter, tenant=tenant, user=body.user, keep_alive=body.keep_alive,
                                 **extensions, **submit, **body.sampling())

        handle = await asyncio.to_thread(submit_named)
        labels.record(handle.id, label_of(request))
        metrics.submitted(handle)
        headers = {"X-Llmos-Request-Id": handle.id}
        if body.stream:
            return StreamingResponse(_sse(request, handle, body.model, submit, body.stream_interval_ms),
                                     media_type="text/event-stream", headers=headers)
        try:
            completion = await _until_done(request, handle.aresult(check=False), handle.cancel)
        finally:
            metrics.finished(handle)
        return completion

    async def _sse(request: Request, handle, model: str, submit: dict[str, Any], interval_ms: int | None):
        chat = "messages" in submit
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def event(delta_text: str | None, finish: str | None) -> str:
            if chat:
                delta = {"role": "assistant", "content": delta_text} if delta_text is not None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": delta_text or "", "finish_reason": finish}
                obj = "text_completion"
            return sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]})

        try:
            every = (interval_ms or 0) / 1000  # a client's cadence: text joined in between
            async for chunk in handle.astream(idle=KEEPALIVE_S, every=every):  # "" while it waits: a comment
                if await request.is_disconnected():
                    handle.cancel()
                    return
                yield event(chunk, None) if chunk else KEEPALIVE
            done = handle.result(0, check=False)
            last = json.loads(event(None if chat else "", _finish(done))[len("data: "):])
            yield sse({**last, "usage": done.usage, "llmos": _extension(done)})
        except LlmosError as exc:
            failed: dict[str, Any] = {"error": {"message": str(exc), "type": "server_error", "code": exc.code}}
            if handle.done:  # the request ended failed, cancelled or timed out: an llmos client reads which
                failed["llmos"] = _extension(handle.result(0, check=False))
            yield sse(failed)
        finally:
            handle.cancel()
            metrics.finished(handle)
        yield DONE

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        messages = render_messages(body.messages)
        schema, tools_text = tool_constraint(body.tools, body.tool_choice)
        if tools_text:
            messages.insert(0, {"role": "system", "content": tools_text})
        schema = schema or response_schema(body.response_format)
        extra = {"json_schema": schema} if schema is not None else {}
        if tools_text and body.stream:  # a tool call streams as one chunk once it is complete
            body.stream = False
            result = await run(request, body, messages=messages, **extra)
            return StreamingResponse(_one_chunk_stream(result, body.model), media_type="text/event-stream")
        result = await run(request, body, messages=messages, **extra)
        if isinstance(result, StreamingResponse):
            return result
        return _completion_body(result, body.model, chat=True, tools=bool(tools_text))

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise InvalidRequestError("give one prompt per request", param="prompt")
            body.prompt = body.prompt[0]
        result = await run(request, body, prompt=body.prompt)
        if isinstance(result, StreamingResponse):
            return result
        return _completion_body(result, body.model, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request, body: EmbeddingRequest):
        if body.model != EMBEDDING_MODEL:
            raise UnknownModelError(body.model, [EMBEDDING_MODEL], paths=False)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise InvalidRequestError("input must be a non-empty string or list of strings", param="input")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequestError(f"input has {len(texts)} texts: give at most {MAX_EMBEDDING_INPUTS} per request",
                                      param="input")
        if max(len(t) for t in texts) > MAX_EMBEDDING_CHARS:
            raise InvalidRequestError(f"each input text may have at most {MAX_EMBEDDING_CHARS} characters "
                                      f"(the model reads about 1,000): split longer texts", param="input")
        service = await asyncio.to_thread(lambda: kernel.embedding)  # loads the embedder on first use
        # the kernel's embedding queue, capped like the model queues (429 when full); leaving cancels the job
        tenant = tenant_of(request)
        held = f"embed-{uuid.uuid4().hex[:12]}"
        kernel.tenants.admit(tenant, held, 0, 0)  # its concurrency (and a quota in debt) holds here too: 429
        try:
            job = service.submit(texts, owner=tenant.name, priority=tenant.default_priority,
                                 max_waiting=kernel.config.max_queue, user=body.user, count_tokens=True)
            done = await _until_done(request, asyncio.wrap_future(job), job.cancel)
        finally:
            kernel.tenants.abandon(held)
        if done is None:
            return Response(status_code=499)  # the client left: nobody reads this
        vectors, tokens = done  # batched with other clients' waiting texts in the kernel's embedding queue
        return {"object": "list", "model": EMBEDDING_MODEL,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


async def _until_done(request: Request, awaitable, cancel):
    """The result of `awaitable` (None if it was cancelled); `cancel()` is called if the client leaves."""
    waiter = asyncio.ensure_future(awaitable)
    while not waiter.done():
        await asyncio.wait({waiter}, timeout=0.5)
        if not waiter.done() and await request.is_disconnected():
            cancel()  # the client went away: free the slot
    return None if waiter.cancelled() else waiter.result()


async def _one_chunk_stream(completion, model: str):
    body = _completion_body(completion, model, chat=True, tools=True)
    if isinstance(body, JSONResponse):
        yield "data: " + body.body.decode() + "\n\n"
    else:
        choice = body["choices"][0]
        delta = {k: v for k, v in choice["message"].items() if v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(delta["tool_calls"])]
        for chunk_choice in ({"index": 0, "delta": delta, "finish_reason": None},
                             {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}):
            yield "data: " + json.dumps({"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
                                         "model": model, "choices": [chunk_choice]}) + "\n\n"
    yield DONE


def _extension(completion) -> dict[str, Any]:
    """What an llmos client reads beside OpenAI's fields: the whole `Completion` but its text."""
    return {"request_id": completion.request_id, "model": completion.model, "status": completion.status.name.lower(),
            "error": completion.error, "token_ids": list(completion.token_ids), "metrics": completion.metrics,
            "sources": list(completion.sources),
            **({"prompt_logprobs": list(completion.prompt_logprobs)} if completion.prompt_logprobs is not None else {})}


def _finish(completion) -> str:
    reason = completion.finish_reason
    return reason if reason in ("stop", "length") else "stop"


def _completion_body(completion, model: str, *, chat: bool, tools: bool = False) -> JSONResponse | dict[str, Any]:
    if completion.error and completion.finish_reason not in ("stop", "length"):
        status = 503 if completion.finish_reason == "cancelled" else 500
        return json_error(status, completion.error, "server_error", None, completion.status.name.lower())
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{completion.request_id}", "created": int(time.time()),
            "model": model, "usage": completion.usage, "llmos": _extension(completion)}
    if chat:
        content, calls = parse_answer(completion.text, tools)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else _finish(completion)}
        return {**base, "object": "chat.completion", "choices": [choice]}
    return {**base, "object": "text_completion",
            "choices": [{"index": 0, "text": completion.text, "finish_reason": _finish(completion)}]}
