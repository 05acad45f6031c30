"""Steps that end early: a llama.cpp step (decodes, prefills and admissions of new sequences) can be
aborted when more urgent work arrives (drivers/llamacpp_lib.py AbortSwitch), and is then redone exactly;
while an urgent request waits for its first token, less urgent work sits the step out
(kernel/sched/scheduler.py).
"""

from __future__ import annotations

import threading

import pytest

from llmos.kernel.tenants.tenant import Tenant

pytestmark = pytest.mark.model

PROMPTS = ["The history of the lighthouse", "A recipe for bread", "Why the sky is blue", "The rules of chess"]


def _run(kernel, **kw):
    handles = [kernel.submit(p, max_tokens=48, temperature=0, ignore_eos=True, **kw) for p in PROMPTS]
    return [h.result(120) for h in handles]


def test_an_aborted_decode_step_is_redone_exactly(kernel, scorer):
    driver = kernel.load("smollm2").driver
    plain = _run(kernel)
    stop = threading.Event()
    pulls = [0]

    def pull_all_the_time() -> None:
        while not stop.is_set():
            pulls[0] += driver.interrupt()
            stop.wait(0.002)

    puller = threading.Thread(target=pull_all_the_time)
    puller.start()
    try:
        aborted = _run(kernel)
    finally:
        stop.set()
        puller.join()
    assert pulls[0] >= 5, "no decode step was aborted: the test proved nothing"
    for prompt, a, b in zip(PROMPTS, plain, aborted):
        assert b.usage["completion_tokens"] == 48
        scorer.assert_same_or_near_tie(driver.tokenize(prompt), b.token_ids, a.token_ids)


def test_an_aborted_admission_step_is_redone_exactly(kernel, scorer, monkeypatch):
    """Steps that place new sequences (their whole prefill) are aborted and given again: every request
    still gets its own greedy continuation."""
    driver = kernel.load("smollm2").driver
    prompts = PROMPTS + [PROMPTS[0] + " and its keeper"]
    plain = [kernel.submit(p, max_tokens=8, temperature=0, ignore_eos=True).result(120) for p in prompts]
    aborted_admissions = [0]
    compute = driver._compute_interruptible

    def spy(model, batch, rids, live, out):
        result = compute(model, batch, rids, live, out)
        aborted_admissions[0] += bool(batch.new and result.pending)
        return result

    monkeypatch.setattr(driver, "_compute_interruptible", spy)
    stop = threading.Event()

    def pull_all_the_time() -> None:
        while not stop.is_set():
            driver.interrupt()
            stop.wait(0.001)

    puller = threading.Thread(target=pull_all_the_time)
    puller.start()
    try:
        for _attempt in range(10):  # a pull can land between two steps; admissions are few
            driver._evict_cache(len(driver._cache))  # every prompt is computed again, not copied whole
            handles = [kernel.submit(p, max_tokens=8, temperature=0, ignore_eos=True) for p in prompts]
            again = [h.result(120) for h in handles]
            if aborted_admissions[0]:
                break
    finally:
        stop.set()
        puller.join()
    assert aborted_admissions[0], "no step that admits new sequences was aborted: the test proved nothing"
    for prompt, a, b in zip(prompts, plain, again):
        assert b.usage["completion_tokens"] == 8
        scorer.assert_same_or_near_tie(driver.tokenize(prompt), b.token_ids, a.token_ids)


def test_an_urgent_request_ends_the_step_in_flight(kernel):
    driver = kernel.load("smollm2").driver
    batch = [kernel.submit(p, tenant=Tenant("nightly", "batch"), max_tokens=2000, temperature=0, ignore_eos=True)
             for p in PROMPTS]
    try:
        while not all(h.request.output_token_ids for h in batch):
            threading.Event().wait(0.01)
        before = driver._model.abort.pulled
        for _attempt in range(5):  # one arriving between two steps has nothing to end (the next one is its)
            urgent = kernel.submit("Name a colour.", tenant=Tenant("desk", "interactive"), max_tokens=4,
                                   temperature=0)
            assert urgent.result(60).usage["completion_tokens"] >= 1
            if driver._model.abort.pulled > before:
                break
        assert driver._model.abort.pulled > before  # an arrival ended the batch's step in flight
        assert not any(h.done for h in batch)  # the batch goes on after it
    finally:
        for h in batch:
            h.cancel()
