"""Property test of the scheduler's invariants over random interleavings of submit, cancel and step:
no request lost, none finished twice, capacity and KV bounds kept, priority classes respected."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.kernel.errors import QueueFullError
from llmos.kernel.request import Priority, Request, RequestStatus, SamplingParams
from llmos.kernel.scheduler import Scheduler, SchedulerConfig

from .fakes import fake_execute

op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.sampled_from(list(Priority)),
              st.sampled_from(["a", "b", "c"]), st.sampled_from([None, "x", "y"])),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 4)),
)


@settings(max_examples=500, deadline=None)
@given(ops=st.lists(op, max_size=60), max_running=st.integers(1, 4), budget=st.integers(4, 40),
       mixed=st.booleans())
def test_invariants(ops, max_running, budget, mixed):
    budget = max(budget, max_running)
    cfg = SchedulerConfig(max_running=max_running, max_waiting=8, max_batched_tokens=budget,
                          kv_capacity=120, max_model_len=60, mixed_adapters=mixed)
    s = Scheduler(cfg, eos_token_ids=())
    state: dict = {}
    added: list[Request] = []
    finished: dict[str, int] = {}

    def step():
        out = s.schedule()
        assert out.total_tokens <= budget
        for rid in out.num_scheduled_tokens:  # only running sequences are computed, never released ones
            assert s.get(rid).status == RequestStatus.RUNNING and rid not in out.released
        if not mixed:
            assert len({r.adapter for r in added if r.request_id in out.num_scheduled_tokens}) <= 1
        assert s.num_running <= max_running
        running = [r for r in added if r.status == RequestStatus.RUNNING]
        assert sum(r.num_computed_tokens + out.num_scheduled_tokens.get(r.request_id, 0) for r in running) <= 120
        if running and s.num_waiting:
            # nothing waiting is more urgent than everything running while the batch is full
            waiting_best = min(r.priority for r in added if r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED))
            if s.num_running == max_running and mixed and waiting_best < max(r.priority for r in running):
                # a more urgent request may wait behind a full batch only when this step's token budget
                # ran out first; the next step's preemption pass makes room for it
                assert out.total_tokens == budget
        s.update_from_output(out, fake_execute(state, out))
        for e in s.drain():
            if e.finished:
                finished[e.request_id] = finished.get(e.request_id, 0) + 1

    for item in ops:
        if item[0] == "add":
            _, plen, max_tokens, prio, owner, adapter = item
            r = Request(prompt_token_ids=[97] * plen, sampling=SamplingParams(max_tokens=max_tokens),
                        priority=prio, owner=owner, adapter=adapter)
            try:
                s.add_request(r)
                added.append(r)
            except QueueFullError:
                assert s.num_waiting == 8
        elif item[0] == "cancel" and added:
            s.finish_requests([added[item[1] % len(added)].request_id], RequestStatus.FINISHED_CANCELLED)
            for e in s.drain():
                finished[e.request_id] = finished.get(e.request_id, 0) + 1
        else:
            for _ in range(item[1]):
                step()
    for _ in range(2000):
        if not s.has_requests():
            break
        step()
    assert not s.has_requests()
    assert all(r.finished for r in added)                      # no request lost
    assert set(finished) == {r.request_id for r in added}      # each one reported...
    assert all(n == 1 for n in finished.values())              # ...exactly once
