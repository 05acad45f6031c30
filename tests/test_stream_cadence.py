"""`RequestHandle`'s async readers (kernel/sched/handle.py): `astream(every=...)` is the cadence the server
streams at for a client that asks one (`stream_interval_ms`, docs/client.md): deltas joined, the first at
once, the request's end never held back; and a reader's event loop is woken only while it waits for
output, so a reader sleeping between deltas (or `aresult`, waiting for the end) is not woken per token.
The engine is this test's thread calling `deliver`, as the engine thread does."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmos.kernel.errors import RequestCancelledError
from llmos.kernel.sched.handle import RequestHandle
from llmos.kernel.sched.interface import RequestOutput
from llmos.kernel.sched.request import Request, RequestStatus

RUNNING, STOPPED = RequestStatus.RUNNING, RequestStatus.FINISHED_STOPPED


def new_handle() -> RequestHandle:
    return RequestHandle(Request(prompt_token_ids=[1]), cancel=lambda _id: None)


def deliver(handle: RequestHandle, text: str, status: RequestStatus = RUNNING) -> None:
    handle.deliver(RequestOutput(handle.id, text, (7,), status))


def count_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Counts the handle's calls into `loop` from other threads (each one wakes it): those that set a
    reader's event (the test's own thread joins are not counted)."""
    calls = [0]
    original = loop.call_soon_threadsafe

    def counted(callback, *args, **kwargs):
        if isinstance(getattr(callback, "__self__", None), asyncio.Event):
            calls[0] += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    return calls


async def in_thread(fn) -> None:
    thread = threading.Thread(target=fn)
    thread.start()
    await asyncio.to_thread(thread.join)


def test_paced_deltas_join_the_text_in_between_at_the_cadence():
    handle, tokens = new_handle(), [f"w{i} " for i in range(60)]

    span = []

    def engine():
        span.append(time.monotonic())
        for token in tokens:
            deliver(handle, token)
            time.sleep(0.005)
        deliver(handle, "", STOPPED)
        span.append(time.monotonic())

    async def read():
        got = []
        producer = asyncio.ensure_future(in_thread(engine))
        async for chunk in handle.astream(every=0.1):
            got.append((time.monotonic(), chunk))
        await producer
        return got

    got = asyncio.run(read())
    assert "".join(chunk for _t, chunk in got) == "".join(tokens)  # nothing lost, nothing twice
    assert 2 <= len(got) <= (span[1] - span[0]) / 0.1 + 2 < len(tokens)  # one delta per 0.1 s (+ first, last)
    times = [t for t, _chunk in got[:-1]]  # the last comes with the request's end, whenever that is
    assert all(b - a >= 0.07 for a, b in zip(times, times[1:]))  # 0.1 s, less what a busy machine's clock reads late


def test_the_first_delta_and_the_end_are_not_held_back_for_the_cadence_and_a_sleeping_reader_is_woken_once():
    handle = new_handle()

    async def read():
        calls = count_wakeups(asyncio.get_running_loop())
        chunks = handle.astream(every=30.0)
        deliver(handle, "first ")
        asked = time.monotonic()
        assert await chunks.__anext__() == "first "  # then the next delta is due in 30 s
        assert time.monotonic() - asked < 10  # the first is not held for the cadence
        before_end = []

        def engine():
            time.sleep(0.3)  # the reader is asleep until its next delta is due
            for i in range(50):
                deliver(handle, f"t{i} ")
            before_end.append(calls[0])
            deliver(handle, "", STOPPED)

        started = time.monotonic()
        producer = asyncio.ensure_future(in_thread(engine))
        rest = [chunk async for chunk in chunks]
        await producer
        return rest, time.monotonic() - started, before_end[0], calls[0]

    rest, took, before_end, wakeups = asyncio.run(read())
    assert rest == ["".join(f"t{i} " for i in range(50))]
    assert took < 10  # the end, not the 30 s cadence
    assert (before_end, wakeups) == (0, 1)  # tokens decoded while it sleeps do not wake its loop; the end does


def test_a_reader_without_a_cadence_gets_every_delta_and_aresult_is_woken_by_the_end_only():
    handle, waiting = new_handle(), new_handle()

    async def read():
        calls = count_wakeups(asyncio.get_running_loop())
        result = asyncio.ensure_future(waiting.aresult())
        await asyncio.sleep(0.1)  # aresult waits now

        def engine():
            for i in range(40):
                deliver(waiting, f"t{i} ")
            deliver(waiting, "", STOPPED)

        await in_thread(engine)
        completion = await result
        woken_for_result = calls[0]
        deltas = []

        async def each():
            async for chunk in handle.astream():
                deltas.append(chunk)

        reader = asyncio.ensure_future(each())
        for i in range(5):
            await asyncio.sleep(0.05)  # the reader waits for each token in turn
            deliver(handle, f"d{i} ")
        deliver(handle, "", STOPPED)
        await reader
        return completion, woken_for_result, deltas

    completion, woken_for_result, deltas = asyncio.run(read())
    assert completion.text == "".join(f"t{i} " for i in range(40)) and woken_for_result == 1
    assert deltas == [f"d{i} " for i in range(5)]  # one delta per token, as OpenAI streams


@pytest.mark.parametrize("every", [None, 0.05])
def test_a_cancelled_request_ends_a_paced_or_plain_reader_with_its_error_after_the_text_before_it(every):
    handle = new_handle()

    async def read():
        got = []
        deliver(handle, "partial ")
        chunks = handle.astream(every=every)
        got.append(await chunks.__anext__())
        deliver(handle, "more ")
        deliver(handle, "", RequestStatus.FINISHED_CANCELLED)
        with pytest.raises(RequestCancelledError):
            async for chunk in chunks:
                got.append(chunk)
        return got

    assert "".join(asyncio.run(read())) == "partial more "


def test_a_waiting_reader_yields_keepalives_and_then_the_text():
    handle = new_handle()

    async def read():
        got = []
        async for chunk in handle.astream(idle=0.05, every=0.05):
            got.append(chunk)
            if got.count("") == 3:  # three keep-alives while nothing came
                deliver(handle, "late ")
                deliver(handle, "", STOPPED)
        return got

    got = asyncio.run(read())
    assert got[:3] == ["", "", ""] and "".join(got) == "late "
