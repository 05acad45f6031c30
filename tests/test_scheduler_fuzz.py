"""Property test of the scheduler's invariants over random interleavings of submit, cancel and step:
no request lost, none finished twice, capacity and KV bounds kept, priority classes respected."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.kernel.errors import QueueFullError
from llmos.kernel.sched.request import Priority, Request, RequestStatus, SamplingParams
from llmos.kernel.sched.scheduler import Scheduler, SchedulerConfig

from .fakes import fake_execute

op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.sampled_from(list(Priority)),
              st.sampled_from(["a", "b", "c"]), st.sampled_from([None, "x", "y"])),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 4)),
)


@settings(max_examples=4000, deadline=None)
@given(ops=st.lists(op, max_size=60), max_running=st.integers(1, 4), budget=st.integers(4, 40),
       mixed=st.booleans(), preemption=st.booleans(), stalls=st.sets(st.integers(0, 400), max_size=40))
def test_invariants(ops, max_running, budget, mixed, preemption, stalls):
    budget = max(budget, max_running)
    cfg = SchedulerConfig(max_running=max_running, max_waiting=8, max_batched_tokens=budget,
                          kv_capacity=120, max_model_len=60, mixed_adapters=mixed, preemption=preemption)
    s = Scheduler(cfg, eos_token_ids=())
    state: dict = {}
    added: list[Request] = []
    finished: dict[str, int] = {}

    steps = [0]

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
            if s.num_running == max_running and mixed and preemption and \
                    waiting_best < max(r.priority for r in running):
                # a more urgent request may wait behind a full batch only when this step's token budget
                # ran out first, or while a still more urgent request computes its first token (less
                # urgent admissions wait for it); the next step's preemption pass makes room for it
                fresh = [r.priority for r in running
                         if r.metrics.first_token is None and r.request_id in out.num_scheduled_tokens]
                if not (fresh and min(fresh) < waiting_best):
                    assert out.total_tokens == budget
        steps[0] += 1
        # the first scheduled sequence (never the least id: ids are random, and hypothesis replays must not be)
        stall = next(iter(out.num_scheduled_tokens), None) if steps[0] in stalls else None
        before = copy.deepcopy(state.get(stall)) if stall else None
        result = fake_execute(state, out)
        if stall:  # a remote-style driver could not advance this sequence in this step
            new = next((n for n in out.new if n.request_id == stall), None)
            state[stall] = [list(new.token_ids), 0] if new is not None else before
            result.sampled.pop(stall, None)
            result.pending = frozenset({stall})
        s.update_from_output(out, result)
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


@settings(max_examples=300, deadline=None)
@given(loads=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 10)), min_size=6, max_size=30),
       owners=st.integers(2, 4), max_running=st.integers(1, 4), budget=st.integers(4, 32))
def test_fair_share_bound(loads, owners, max_running, budget):
    """Owners of one priority class flooding the queue get service within a bounded gap of each other
    while all of them still have work: one request's tokens plus one step's budget per running slot."""
    budget = max(budget, max_running)
    s = Scheduler(SchedulerConfig(max_running=max_running, max_waiting=200, max_batched_tokens=budget,
                                  kv_capacity=10_000, max_model_len=64), eos_token_ids=())
    names = [f"o{i}" for i in range(owners)]
    pending = {o: 0 for o in names}
    for o in names:  # every owner submits the same work, one owner after the other (FIFO would be unfair)
        for i, (plen, max_tokens) in enumerate(loads):
            s.add_request(Request(prompt_token_ids=[97] * plen, sampling=SamplingParams(max_tokens=max_tokens),
                                  owner=o, request_id=f"{o}-{i}"))
            pending[o] += 1
    served = {o: 0 for o in names}
    biggest = max(p + m for p, m in loads)
    state: dict = {}
    for _ in range(20_000):
        if not s.has_requests():
            break
        out = s.schedule()
        for rid, n in out.num_scheduled_tokens.items():
            served[rid.split("-")[0]] += n
        s.update_from_output(out, fake_execute(state, out))
        for e in s.drain():
            if e.finished:
                pending[e.request_id.split("-")[0]] -= 1
        if all(pending.values()):
            assert max(served.values()) - min(served.values()) <= max_running * biggest + budget, served
    assert not s.has_requests()
