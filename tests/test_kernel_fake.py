"""Kernel, engine loop and handles end to end with the fake driver (registered through the plugin
hook, as third-party drivers are): no model needed."""

from __future__ import annotations

import asyncio
import threading

import pytest

import llmos
from llmos.kernel.errors import (InvalidRequestError, KernelShutdownError, ModelFormatError, QueueFullError,
                                 RequestCancelledError, RequestFailedError, RequestTimeoutError,
                                 UnknownAdapterError, UnknownModelError)
from llmos.kernel.sched.request import RequestStatus
from llmos.plugins.hookspecs import hookimpl
from llmos.plugins.manager import PluginManager

from .fakes import FakeDriver
from .util import wait_for


class GatedDriver(FakeDriver):
    """Blocks in execute until the test opens the gate: lets tests observe queued/running states."""

    name = "gated"
    gate = threading.Event()

    def execute(self, batch):
        type(self).gate.wait(10)
        return super().execute(batch)


class BigDriver(FakeDriver):
    name = "big"

    def load(self, progress=None):
        info = super().load(progress)
        from dataclasses import replace

        self.info = replace(info, memory_bytes=700 * 1024)
        return self.info


def plugin_manager(*drivers):
    class Plugin:
        @hookimpl
        def register_drivers(self, register):
            for d in drivers:
                register(d)

    pm = PluginManager(load_entrypoints=False)
    pm.register(Plugin(), name="test-drivers")
    return pm


@pytest.fixture
def gguf(tmp_path):
    def make(name="fake.gguf"):
        path = tmp_path / name
        path.write_bytes(b"GGUF" + b"\0" * 64)
        return str(path)
    return make


@pytest.fixture
def fake_kernel(gguf, tmp_path):
    FakeDriver.fail_next = False
    FakeDriver.loads = 0
    progress = []
    k = llmos.boot(home=tmp_path / "home", plugins=plugin_manager(FakeDriver, GatedDriver, BigDriver),
                   progress=lambda m, f: progress.append(f), default_model=gguf(), max_running=2, max_queue=2)
    k.test_progress = progress
    yield k
    GatedDriver.gate.set()
    k.shutdown()


def test_generate_stream_and_async_agree(fake_kernel):
    c = fake_kernel.generate("hello", driver="fake", max_tokens=6)
    assert c.status == RequestStatus.FINISHED_LENGTH and len(c.text) == 6 and c.finish_reason == "length"
    assert "".join(fake_kernel.stream("hello", driver="fake", max_tokens=6)) == c.text

    async def both():
        chunks = [x async for x in fake_kernel.astream("hello", driver="fake", max_tokens=6)]
        return "".join(chunks), (await fake_kernel.agenerate("hello", driver="fake", max_tokens=6)).text

    assert asyncio.run(both()) == (c.text, c.text)
    assert fake_kernel.test_progress[0] == 0.0 and fake_kernel.test_progress[-1] == 1.0


def test_chat_uses_the_drivers_template(fake_kernel):
    c = fake_kernel.chat([{"role": "user", "content": "hi"}], driver="fake", max_tokens=3)
    default = fake_kernel.config.system_prompt
    assert default and c.metrics["prompt_tokens"] == len(f"<system>{default}<user>hi<assistant>")
    own = fake_kernel.chat([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
                           driver="fake", max_tokens=3)
    assert own.metrics["prompt_tokens"] == len("<system>S<user>hi<assistant>")


def test_driver_fault_fails_only_that_step_and_reloads(fake_kernel):
    fake_kernel.generate("warm", driver="fake", max_tokens=2)
    FakeDriver.fail_next = True
    with pytest.raises(RequestFailedError, match="injected fault"):
        fake_kernel.generate("boom", driver="fake", max_tokens=5)
    assert fake_kernel.generate("after", driver="fake", max_tokens=3).text
    assert FakeDriver.loads == 2
    assert fake_kernel.engines()[0]["failures"] == 1


def test_queue_full_cancel_and_ps(fake_kernel):
    GatedDriver.gate.clear()
    handles = [fake_kernel.submit("x", driver="gated", max_tokens=3, owner="u0")]
    wait_for(lambda: [r["state"] for r in fake_kernel.ps()] == ["running"], msg=fake_kernel.ps)
    # the engine is now blocked inside execute: new requests queue up to max_queue (2)
    handles += [fake_kernel.submit("x", driver="gated", max_tokens=3, owner=f"u{i}") for i in (1, 2)]
    with pytest.raises(QueueFullError):
        fake_kernel.submit("x", driver="gated", max_tokens=3)
    assert [row["state"] for row in fake_kernel.ps()] == ["running", "waiting", "waiting"]
    handles[2].cancel()
    handles[0].cancel()
    GatedDriver.gate.set()
    with pytest.raises(RequestCancelledError):
        handles[2].result(5)
    assert handles[0].result(5, check=False).status == RequestStatus.FINISHED_CANCELLED
    assert handles[1].result(5).status == RequestStatus.FINISHED_LENGTH
    assert fake_kernel.ps() == []


def test_request_timeout(fake_kernel):
    GatedDriver.gate.clear()
    h = fake_kernel.submit("x", driver="gated", max_tokens=3, timeout=0.2)
    threading.Timer(0.6, GatedDriver.gate.set).start()
    with pytest.raises(RequestTimeoutError):
        h.result(5)


def test_memory_budget_unloads_least_recently_used(gguf, tmp_path):
    k = llmos.boot(home=tmp_path / "h2", plugins=plugin_manager(BigDriver), memory_budget_mb=1)
    try:
        a, b = gguf("a.gguf"), gguf("b.gguf")
        k.generate("x", model=a, driver="big", max_tokens=1)
        k.generate("x", model=b, driver="big", max_tokens=1)
        assert [e["model"] for e in k.engines()] == [b]
    finally:
        k.shutdown()


@pytest.mark.parametrize("kwargs, param", [
    (dict(prompt=""), "prompt"),
    (dict(prompt="   "), "prompt"),
    (dict(prompt="\ud800 bad surrogate"), "prompt"),
    (dict(prompt="hi", max_tokens=0), "max_tokens"),
    (dict(prompt="hi", max_tokens=-5), "max_tokens"),
    (dict(prompt="hi", max_tokens=10**6), "max_tokens"),
    (dict(prompt="hi", temperature=5.0), "temperature"),
    (dict(prompt="hi", top_p=0.0), "top_p"),
    (dict(prompt="hi", top_k=-1), "top_k"),
    (dict(prompt="hi", priority="urgent"), "priority"),
    (dict(prompt="hi", timeout=-1), "timeout"),
    (dict(prompt="hi", bogus=1), "bogus"),
    (dict(prompt="hi", driver="nope"), "driver"),
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "wizard", "content": "x"}]), "messages"),
])
def test_bad_input_gets_typed_error_naming_the_field(fake_kernel, kwargs, param):
    kwargs.setdefault("driver", "fake")
    with pytest.raises(InvalidRequestError) as info:
        fake_kernel.submit(**kwargs)
    assert info.value.param == param
    assert fake_kernel.generate("still serving", driver="fake", max_tokens=2).text


def test_prompt_too_long(fake_kernel):
    with pytest.raises(InvalidRequestError, match="context window is 512"):
        fake_kernel.submit("x" * 600, driver="fake")


def test_unknown_model_lists_available(fake_kernel):
    with pytest.raises(UnknownModelError) as info:
        fake_kernel.submit("hi", model="no-such-model")
    assert "smollm2" in str(info.value)


def test_non_gguf_file_is_refused(fake_kernel, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        fake_kernel.submit("hi", model=str(bad))


def test_unknown_adapter(fake_kernel):
    with pytest.raises(UnknownAdapterError):
        fake_kernel.submit("hi", driver="fake", adapter="nope")


def test_a_json_schema_on_a_driver_that_cannot_constrain_is_refused_naming_the_drivers_that_can(gguf, tmp_path):
    from .fakes import ScriptedDriver

    with llmos.boot(home=tmp_path / "h4", plugins=plugin_manager(FakeDriver, ScriptedDriver), default_model=gguf()) as k:
        with pytest.raises(InvalidRequestError, match="fake driver cannot constrain output") as info:
            k.submit("hi", driver="fake", json_schema={"type": "object"})
        hint = str(info.value).split("use --driver ")[1]
        assert info.value.param == "json_schema" and "scripted" in hint.split(" or ") and "fake" not in hint


def test_a_json_schema_request_goes_to_the_engine_already_serving_the_model_not_a_new_load(gguf, tmp_path,
                                                                                          monkeypatch):
    from .fakes import ScriptedDriver

    class Second(ScriptedDriver):
        name = "second"

    monkeypatch.setattr(ScriptedDriver, "reply", staticmethod(lambda prompt: "{}"))
    with llmos.boot(home=tmp_path / "h5", plugins=plugin_manager(ScriptedDriver, Second), default_model=gguf()) as k:
        k.load(driver="second")  # loaded on the second capable driver only
        assert k.submit("hi", json_schema={"type": "object"}, max_tokens=4).result(10).text == "{}"
        assert [e["driver"] for e in k.engines()] == ["second"]  # not a second copy on "scripted"
    with llmos.boot(home=tmp_path / "h6", plugins=plugin_manager(FakeDriver, ScriptedDriver), default_model=gguf()) as k:
        k.submit("hi", json_schema={"type": "object"}, max_tokens=4).result(10)  # nothing loaded: the first able
        assert [e["driver"] for e in k.engines()] == ["scripted"]


def test_shutdown_cancels_in_flight_and_refuses_new(gguf, tmp_path):
    GatedDriver.gate.clear()
    k = llmos.boot(home=tmp_path / "h3", plugins=plugin_manager(GatedDriver), default_model=gguf())
    k.load(driver="gated")
    h = k.submit("x", driver="gated", max_tokens=50)
    threading.Timer(0.3, GatedDriver.gate.set).start()
    k.shutdown()
    assert h.result(5, check=False).status == RequestStatus.FINISHED_CANCELLED
    with pytest.raises(KernelShutdownError):
        k.submit("x")
    k.shutdown()  # idempotent


def test_stream_validates_before_returning(fake_kernel):
    with pytest.raises(InvalidRequestError):
        fake_kernel.stream("", driver="fake")
    with pytest.raises(InvalidRequestError):
        fake_kernel.astream("hi", driver="fake", temperature=9)


def test_an_abandoned_async_reader_does_not_kill_the_engine(fake_kernel):
    loop = asyncio.new_event_loop()

    async def read_one():
        async for _chunk in fake_kernel.astream("abandoned", driver="gated", max_tokens=50):
            return

    GatedDriver.gate.set()
    loop.run_until_complete(read_one())
    loop.close()  # the reader's loop is gone while its request may still deliver events
    assert fake_kernel.generate("after", driver="gated", max_tokens=3).text


def test_a_tenant_over_its_limits_is_refused_before_any_model_loads(fake_kernel, gguf):
    from llmos.kernel.errors import QuotaExceededError
    from llmos.kernel.tenants.tenant import Tenant

    capped = Tenant("capped", max_concurrency=1)
    fake_kernel.tenants.admit(capped, "held", 1, 1)  # one request in flight: its limit
    try:
        loads = FakeDriver.loads
        with pytest.raises(QuotaExceededError, match="max_concurrency 1"):
            fake_kernel.submit("hi", model=gguf("unloaded.gguf"), driver="fake", tenant=capped)
        assert FakeDriver.loads == loads  # refused before it cost a model load
        assert fake_kernel.tenants.usage()["capped"]["throttled"] == 1
    finally:
        fake_kernel.tenants.abandon("held")
    assert fake_kernel.submit("hi", driver="fake", tenant=capped, max_tokens=2).result(30).text
