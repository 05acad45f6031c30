"""One contract, two implementations: every test here runs against an in-process `Kernel`
(`llmos.boot()`) and against a `Client` (`llmos.connect()`) of a resident kernel (`llmos up`, a real
daemon process on its Unix socket), each on its own LLMOS_HOME with SmolLM2 on llama.cpp. Same calls,
same results, same typed errors with the same messages.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

import llmos
from llmos.kernel.errors import (InvalidRequestError, PromptTooLongError, RequestCancelledError,
                                 UnknownAdapterError, UnknownModelError)
from llmos.kernel.memfs.paths import MemNotFoundError
from llmos.kernel.proc.sessions import UnknownSessionError
from llmos.kernel.sched.handle import Completion
from llmos.kernel.sched.request import RequestStatus
from llmos.kernel.tools.capabilities import ToolDeniedError
from llmos.kernel.tools.tools import UnknownToolError

from .test_daemon import Daemon
from .util import wait_for

pytestmark = [pytest.mark.model, pytest.mark.cli]

GREEDY = {"max_tokens": 12, "temperature": 0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """{"local": Kernel, "client": Client}: both up for the whole module."""
    local = llmos.boot(home=tmp_path_factory.mktemp("local"), load_entrypoints=False)
    local.load("smollm2")
    daemon = Daemon(tmp_path_factory.mktemp("resident") / "home")
    try:
        daemon.up()
        client = llmos.connect(home=daemon.home)
        yield {"local": local, "client": client}
        client.shutdown()
    finally:
        local.shutdown()
        daemon.llmos("down")
        daemon.kill_all()


@pytest.fixture(params=["local", "client"])
def k(request, kernels):
    return kernels[request.param]


def test_both_implement_the_kernel_api(k):
    assert isinstance(k, llmos.KernelAPI)
    assert k.config.default_model == "smollm2"
    assert "smollm2" in [m["name"] for m in k.models_info()]


def test_generate_returns_a_complete_completion(k):
    done = k.generate("The capital of France is", **GREEDY)
    assert isinstance(done, Completion) and done.text.strip()
    assert done.status in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH)
    assert done.usage["completion_tokens"] == len(done.token_ids) > 0 and done.usage["prompt_tokens"] > 0
    assert done.model == "smollm2" and done.request_id.startswith("req-")


def test_greedy_answers_are_the_same_in_both_modes(kernels):
    local, client = kernels["local"].chat(QUESTION, **GREEDY), kernels["client"].chat(QUESTION, **GREEDY)
    assert local.text == client.text and local.token_ids == client.token_ids
    assert local.finish_reason == client.finish_reason


def test_stream_yields_the_text_that_result_returns(k):
    handle = k.submit(messages=QUESTION, **GREEDY)
    chunks = list(handle.stream())
    assert len(chunks) > 1 and "".join(chunks) == handle.result().text
    assert "".join(k.stream(messages=QUESTION, **GREEDY)) == handle.result().text


def test_a_client_asking_a_cadence_gets_the_same_text_in_fewer_deltas(kernels):
    plain = kernels["client"]
    paced = llmos.connect(f"unix:{plain.where}", stream_interval_ms=300)
    try:
        ask = {"messages": QUESTION, "max_tokens": 40, "temperature": 0, "ignore_eos": True}
        every_token = list(plain.stream(**ask))
        started = time.monotonic()
        joined = list(paced.stream(**ask))
        took = time.monotonic() - started
        assert "".join(joined) == "".join(every_token)
        assert 2 <= len(joined) <= took / 0.3 + 2 and len(joined) < len(every_token) - 1  # one per 300 ms at most
    finally:
        paced.shutdown()
    for bad in (-1, 1001, 0.5, True):
        with pytest.raises(InvalidRequestError, match="stream_interval_ms") as info:
            llmos.connect(f"unix:{plain.where}", stream_interval_ms=bad)
        assert info.value.param == "stream_interval_ms"


def test_submit_cancel_and_ps(k):
    handle = k.submit("Count from one to a thousand:", max_tokens=2000, temperature=0)
    first = next(iter(handle.stream()))
    assert first
    assert handle.id in [row["id"] for row in k.ps()]
    handle.cancel()
    with pytest.raises(RequestCancelledError):
        handle.result()
    assert handle.result(check=False).status == RequestStatus.FINISHED_CANCELLED
    assert handle.id not in [row["id"] for row in k.ps()]
    assert k.cancel(handle.id) is False and k.cancel("req-none") is False


def test_the_async_forms(k):
    async def main():
        done = await k.agenerate("The capital of France is", **GREEDY)
        chat = await k.achat(QUESTION, **GREEDY)
        chunks = [c async for c in k.astream(messages=QUESTION, **GREEDY)]
        return done, chat, chunks

    done, chat, chunks = asyncio.run(main())
    assert done.text and "".join(chunks) == chat.text


def test_handles_dropped_mid_stream_are_closed_without_deadlocking_the_client(kernels, monkeypatch):
    """A handle dropped mid-stream (its reader in a reference cycle) is finalized by the garbage collector
    wherever a collection runs, also inside httpx's connection-pool lock: closing its stream there once
    deadlocked the client (CI hung). Here a collection runs exactly there, on every request."""
    from httpcore import ConnectionPool

    client = kernels["client"]
    dropped = []
    gc.disable()  # the dropped handles wait for the collection below
    try:
        for _ in range(3):
            handle = client.submit("Count from one to a hundred:", max_tokens=200, temperature=0)
            next(iter(handle.stream()))
            dropped.append(handle.id)
            del handle
        assign = ConnectionPool._assign_requests_to_connections  # called with the pool's lock held
        monkeypatch.setattr(ConnectionPool, "_assign_requests_to_connections", lambda pool: (gc.collect(), assign(pool))[1])
        answered = threading.Event()
        threading.Thread(target=lambda: client.generate("Hi", max_tokens=2) and answered.set(), daemon=True).start()
        assert answered.wait(60), "the client deadlocked closing a dropped stream inside its own pool lock"
    finally:
        gc.enable()
    # each dropped stream was closed, and the kernel cancelled its request
    wait_for(lambda: not set(dropped) & {row["id"] for row in client.ps()}, 60)


@pytest.mark.parametrize("call, error, param", [
    (lambda k: k.submit("hi", temperature=5), InvalidRequestError, "temperature"),
    (lambda k: k.submit("hi", max_tokne=3), InvalidRequestError, "max_tokne"),
    (lambda k: k.submit("hi", model="no-such-model"), UnknownModelError, None),
    (lambda k: k.submit("hi", adapter="no-such-module"), UnknownAdapterError, None),
    (lambda k: k.submit("word " * 10000, max_tokens=16), PromptTooLongError, "prompt"),
    (lambda k: k.submit(messages=[{"role": "wizard", "content": "x"}]), InvalidRequestError, None),
    (lambda k: k.submit("hi", rag="/docs", rag_k=0), InvalidRequestError, "rag_k"),
])
def test_bad_input_raises_the_same_typed_error_in_both_modes(kernels, call, error, param):
    messages = []
    for mode in ("local", "client"):
        with pytest.raises(error) as info:
            call(kernels[mode])
        assert type(info.value) is error, mode
        if param is not None:
            assert info.value.param == param, mode
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_memfs_operations(k, request):
    root = f"/contract-{request.node.callspec.id}"
    k.mem.write(f"{root}/paris.txt", "Paris is the capital of France.", tags=["geo"])
    k.mem.append(f"{root}/paris.txt", " It is on the Seine.")
    assert k.mem.cat(f"{root}/paris.txt") == "Paris is the capital of France. It is on the Seine."
    assert k.mem.stat(f"{root}/paris.txt")["type"] == "file"
    assert [e["path"] for e in k.mem.ls(root)] == [f"{root}/paris.txt"]
    assert k.mem.find("Which river flows through Paris?", root, 1)[0]["path"] == f"{root}/paris.txt"
    assert k.mem.grep("Seine", root)[0]["path"] == f"{root}/paris.txt"
    k.mem.mv(f"{root}/paris.txt", f"{root}/fr/paris.txt")
    assert k.mem.rm(root, recursive=True) == 1
    with pytest.raises(MemNotFoundError):
        k.mem.cat(f"{root}/paris.txt")


def test_rag_answers_from_at_most_k_passages_and_lists_them_as_sources(k, request):
    root = f"/rag-{request.node.callspec.id}"
    facts = {"owls.md": "Owls hunt at night and can turn their heads very far.",  # all three answer a little
             "barn.md": "Barn owls eat mice and voles, hunting over open fields.",
             "snowy.md": "Snowy owls live in the Arctic and also hunt by day in summer."}
    for name, text in facts.items():
        k.mem.write(f"{root}/{name}", text)
    try:
        ask = {"messages": [{"role": "user", "content": "When do owls hunt?"}], "max_tokens": 8, "temperature": 0}
        one = k.submit(rag=root, rag_k=1, **ask).result()
        assert list(one.sources) == [f"{root}/owls.md"]
        more = k.submit(rag=root, rag_k=3, **ask).result()
        assert more.sources[0] == f"{root}/owls.md" and len(more.sources) == 3  # so k=1 is what cut the others
    finally:
        k.mem.rm(root, recursive=True)


def test_sessions(k, request):
    name = f"contract-{request.node.callspec.id}"
    s = k.sessions.open(name, system="Be brief.")
    s.append({"role": "user", "content": "hello"})
    s.update(model="smollm2")
    again = k.sessions.get(name)
    assert again.id == s.id and again.system == "Be brief." and again.model == "smollm2"
    assert again.messages == [{"role": "user", "content": "hello"}]
    assert name in [row["name"] for row in k.sessions.list("chat")]
    assert "hello" in k.sessions.export(name, "md")
    k.sessions.delete(name)
    with pytest.raises(UnknownSessionError):
        k.sessions.get(name)


def test_tools_tasks_and_approvals(k):
    assert {"calculator", "mem_write"} <= set(k.tools.all())
    assert k.call_tool("calculator", {"expression": "6*7"}, owner="contract").value == 42
    with pytest.raises(UnknownToolError):
        k.call_tool("no_such_tool", {})
    with pytest.raises(ToolDeniedError) as denied:  # memfs.write is not granted: nobody to ask
        k.call_tool("mem_write", {"path": "/t/x.txt", "text": "x"})
    assert "memfs.write" in str(denied.value)
    asked = []
    result = k.call_tool("mem_write", {"path": "/t/x.txt", "text": "x"},
                         approve=lambda tool, missing: asked.append((tool, missing)) or "once")
    assert result.ok and asked == [("mem_write", frozenset({"memfs.write"}))]
    assert "summarize" in k.tools.tasks
    assert k.run_task("summarize", {"text": "Cats are small furry animals."})["summary"]


def test_an_agent_process_with_events_and_a_session(k):
    proc = k.spawn("What is 2 plus 2? Answer in one short sentence.", tools=[], max_steps=2, max_tokens=64,
                   owner="contract")
    kinds = [e.kind for e in proc.events()]
    assert proc.wait(60)
    assert "answer" in kinds and "token" in kinds and proc.answer
    assert proc.state.name == "FINISHED"
    stored = k.sessions.get(proc.session_id)
    assert stored.kind == "agent" and stored.messages[0]["content"].startswith("What is 2 plus 2?")


def test_modules_and_engines(k):
    assert k.lsmod() == [] and k.modules_info() == []
    with pytest.raises(UnknownAdapterError):
        k.insmod("no-such-module")
    assert [e["model"] for e in k.engines()] == ["smollm2"]


def test_an_agents_approval_is_asked_of_the_caller(k, request):
    asked = []
    path = f"/approved/{request.node.callspec.id}.txt"
    proc = k.spawn(f"Write the word hello to the file {path}.", tools=["mem_write"], max_steps=2, max_tokens=256,
                   approve=lambda tool, missing: asked.append((tool, missing)) or "once")
    events = list(proc.events())
    assert proc.wait(60)
    assert asked and asked[0] == ("mem_write", frozenset({"memfs.write"}))
    results = [e for e in events if e.kind == "tool_result"]
    assert results and "capability" not in results[0].text  # approved: the call ran


def test_prompt_logprobs_score_the_prompt_whole_and_alike(k, kernels, scorer):
    """Each prompt token after the first gets log p(token | tokens before it), computed whole (never from
    the prefix cache: the same prompt a second time scores the same), over HTTP as in process, and
    within llama.cpp's batch-shape noise of plain llama_cpp.Llama (tests/greedy.py)."""
    import numpy as np

    text = "The capital of France is Paris. The capital of Italy is Rome."
    first = k.generate(text, max_tokens=1, temperature=0, prompt_logprobs=True)
    again = k.generate(text, max_tokens=1, temperature=0, prompt_logprobs=True)
    ids = kernels["local"].load("smollm2").driver.tokenize(text)
    assert len(first.prompt_logprobs) == len(ids) - 1 and again.metrics["cached_prompt_tokens"] == 0
    assert again.prompt_logprobs == first.prompt_logprobs
    rows = scorer.logits(ids[:1], ids[1:])[:-1].astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    reference = rows[np.arange(len(ids) - 1), ids[1:]] - (top[:, 0] + np.log(np.exp(rows - top).sum(axis=1)))
    assert np.abs(np.array(first.prompt_logprobs) - reference).max() < 1.0  # greedy.py: noise up to ~0.95
    assert abs(np.mean(first.prompt_logprobs) - reference.mean()) < 0.1  # a perplexity moves far less
    assert k.generate(text, max_tokens=1).prompt_logprobs is None
    assert k.tokenize(text) == ids and k.tokenize(text, model="smollm2") == ids
    with pytest.raises(InvalidRequestError, match="prompt_logprobs must be true or false"):
        k.generate(text, prompt_logprobs="yes")
