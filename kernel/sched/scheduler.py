"""The scheduler: decides, step by step, which sequences a driver computes.

Boundaries: pure Python, no model, no threads, no I/O. The engine (kernel/sched/engine.py) calls it under
a lock; tests drive it directly with a fake driver.

Policy, in order of precedence:
1. Priority classes: a lower `Priority` value is admitted first, and when the batch is full it
   preempts the least urgent running request (which goes back to the front of its queue and is
   recomputed later: prompt + what it already generated).
2. Fair share within a class: each owner (tenant) accrues the tokens computed for it in a ledger that
   every engine shares (fairshare.py, VTC); the next admission goes to the waiting owner with the least
   service, so one chatty tenant cannot starve another. An owner that was idle is lifted to the
   current minimum so it gets no burst credit. A recomputation after preemption is not charged.
3. Continuous batching with chunked prefill: each step runs every running decode (1 token) first,
   then prefill chunks, within `max_batched_tokens`; KV use never exceeds `kv_capacity` (without
   preemption, admission reserves each request's longest, so running sequences never wait on each
   other for KV). While a more urgent request waits for its first token, less urgent work sits the
   step out.
4. Deadlines end a request FINISHED_TIMED_OUT wherever it is; the waiting queue is bounded
   (`QueueFullError`, never a blocking put).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Callable, Iterable

from .detokenizer import Detokenizer
from .fairshare import ServiceLedger
from ..errors import PromptTooLongError, QueueFullError
from .interface import DriverOutput, NewSequence, RequestOutput, SchedulerConfig, SchedulerOutput
from .request import Priority, Request, RequestStatus


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        eos_token_ids: Iterable[int] = (),
        detokenizer_factory: Callable[[Request], Detokenizer] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ledger: ServiceLedger | None = None,
    ) -> None:
        self.config = config or SchedulerConfig()
        self.eos_token_ids = frozenset(eos_token_ids)
        self._detokenizer_factory = detokenizer_factory
        self._clock = clock
        self._requests: dict[str, Request] = {}
        self._order: dict[str, int] = {}
        self._counter = itertools.count()
        self._detok: dict[str, Detokenizer] = {}
        self._emitted: dict[str, int] = {}
        self._waiting: dict[Priority, dict[str, deque[Request]]] = {p: {} for p in Priority}
        self._num_waiting = 0
        self._running: list[Request] = []
        self.ledger = ledger if ledger is not None else ServiceLedger()  # shared by the kernel's engines
        self._charged: set[str] = set()  # requests whose prompt their owner paid for (recompute is free)
        self._released: list[str] = []
        self._finished: set[str] = set()  # released requests that ended normally (SchedulerOutput.finished)
        self._bypassed: dict[str, int] = {}  # waiting head -> requests of another group admitted ahead of it
        self._outbox: list[RequestOutput] = []
        self._step = 0

    # -- queries -----------------------------------------------------------------------------------

    def has_requests(self) -> bool:
        return bool(self._requests) or bool(self._released)

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def num_running(self) -> int:
        return len(self._running)

    def get(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def requests(self) -> list[Request]:
        return sorted(self._requests.values(), key=self._sort_key)

    def next_deadline(self) -> float | None:
        return min((r.deadline for r in self._requests.values() if r.deadline is not None), default=None)

    def queue_positions(self) -> dict[str, int]:
        """Waiting requests -> their place in line (1: admitted next), in the order admission takes them."""
        waiting = [r for q in self._waiting.values() for d in q.values() for r in d]
        waiting.sort(key=lambda r: (int(r.priority), self.ledger.served(r.owner), self._order[r.request_id]))
        return {r.request_id: i for i, r in enumerate(waiting, 1)}

    def outranks_running(self, request: Request) -> bool:
        """`request` is more urgent than everything running (worth ending a step in flight for)."""
        return bool(self._running) and all(request.priority < r.priority for r in self._running)

    def urgency(self) -> tuple[int, float] | None:
        """(priority, service) of the most urgent owner with work here, None if idle: how device gates
        (gate.py) choose between engines that share one compute resource."""
        if not self._requests:
            return None
        prio = min(r.priority for r in self._requests.values())
        return int(prio), min(self.ledger.served(r.owner) for r in self._requests.values() if r.priority == prio)

    def drain(self) -> list[RequestOutput]:
        """Events produced since the last drain (tokens, finishes, timeouts, cancellations)."""
        out, self._outbox = self._outbox, []
        return out

    # -- intake and cancellation -------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        if self._num_waiting >= self.config.max_waiting:
            raise QueueFullError(self.config.max_waiting)
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id}")
        limit = min(self.config.kv_capacity, self.config.max_model_len)
        if request.num_tokens + 1 > limit:
            raise PromptTooLongError(request.num_tokens, request.sampling.max_tokens, limit)
        self._requests[request.request_id] = request
        self._order[request.request_id] = next(self._counter)
        if self._detokenizer_factory is not None:
            self._detok[request.request_id] = self._detokenizer_factory(request)
        self._emitted[request.request_id] = 0
        request.status = RequestStatus.WAITING
        self.ledger.joined(request.owner)
        self._enqueue(request, front=False)

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus, error: str | None = None) -> None:
        """End requests in any non-terminal state (cancel, kill, failure, timeout)."""
        if not status.finished:
            raise ValueError(f"{status!r} is not a terminal status")
        for rid in request_ids:
            req = self._requests.get(rid)
            if req is not None:
                self._finish(req, status, error)

    def preempt_all(self) -> None:
        """Send every running request back to waiting (after a driver reset lost their state)."""
        for req in list(self._running):
            self._preempt(req)

    # -- one step ----------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        # 1. Expire deadlines everywhere.
        now = self._clock()
        for req in [r for r in self._requests.values() if r.deadline is not None and r.deadline <= now]:
            self._finish(req, RequestStatus.FINISHED_TIMED_OUT, "deadline passed before it finished")

        budget = self.config.max_batched_tokens
        scheduled: dict[str, int] = {}
        new: list[NewSequence] = []
        self._running.sort(key=self._sort_key)

        # 2. A full batch yields to more urgent waiting requests before anything is scheduled
        #    (without mixed adapters, a more urgent request of another adapter clears the batch).
        while self._num_waiting and self._running and self.config.preemption:
            best, worst = self._peek_waiting(), self._running[-1]
            if best.priority >= worst.priority:
                break
            if not self._fits_group(best):
                for req in [r for r in self._running if r.priority > best.priority]:
                    self._preempt(req)
                break
            if len(self._running) < self.config.max_running:
                break
            self._preempt(worst)

        # 3. Running sequences: decodes first (one token each), then prefill chunks; while a more urgent
        #    request waits for its first token, less urgent work sits this step out (its TTFT is one
        #    prefill, not a prefill plus everyone's decodes).
        urgent = self._urgent_first_token()
        for decoding in (True, False):
            for req in list(self._running):
                if req.status != RequestStatus.RUNNING:
                    continue  # preempted earlier in this pass to make room
                if urgent is not None and req.priority > urgent:
                    continue
                need = req.num_tokens - req.num_computed_tokens
                if (need == 1) != decoding or req.request_id in scheduled or budget <= 0:
                    continue
                n = min(need, budget)
                budget += self._make_room(req, n, scheduled)
                if self._kv_used(scheduled) + n > self.config.kv_capacity:
                    continue
                scheduled[req.request_id] = n
                budget -= n

        # 4. Admit waiting requests while capacity, budget and KV allow; preempt for priority.
        while budget > 0 and self._num_waiting:
            cand = self._peek_waiting()
            if urgent is not None and cand.priority > urgent:
                break  # less urgent admissions wait for the urgent first token too
            if not self._fits_group(cand):
                # the running batch (another adapter) drains first, then this group runs; meanwhile a
                # bounded number of requests of the running group queued behind it may still join
                cand = self._bypass(cand)
                if cand is None:
                    break
            if len(self._running) >= self.config.max_running:
                victim = self._running[-1]
                if cand.priority >= victim.priority or not self.config.preemption:
                    break
                budget += scheduled.pop(victim.request_id, 0)
                self._preempt(victim)
                continue
            budget += self._make_room(cand, cand.num_tokens, scheduled, admitting=True)
            if (self._kv_used(scheduled) + cand.num_tokens > self.config.kv_capacity
                    or len(self._running) >= self.config.max_running or not self._kv_reservable(cand)):
                break
            self._pop_waiting(cand)
            self._charge(cand, sampled=False)
            n = min(cand.num_tokens, budget)
            cand.status = RequestStatus.RUNNING
            cand.num_computed_tokens = 0
            if cand.metrics.first_scheduled is None:
                cand.metrics.first_scheduled = now
            self._running.append(cand)
            self._running.sort(key=self._sort_key)
            new.append(NewSequence(cand.request_id, tuple(cand.all_token_ids), cand.sampling, cand.adapter,
                                   len(cand.prompt_token_ids), int(cand.priority), cand.cache_key,
                                   cand.cache_salt))
            scheduled[cand.request_id] = n
            budget -= n

        self._step += 1
        released, self._released = tuple(self._released), []
        finished, self._finished = frozenset(self._finished), set()
        return SchedulerOutput(self._step, tuple(new), scheduled, released, finished)

    def update_from_output(self, sched: SchedulerOutput, out: DriverOutput) -> None:
        for rid, n in sched.num_scheduled_tokens.items():
            req = self._requests.get(rid)
            if req is None or req.status != RequestStatus.RUNNING:
                continue  # cancelled or preempted while the driver ran
            if rid in out.failed:
                self._finish(req, RequestStatus.FINISHED_FAILED, out.failed[rid])
                continue
            if rid in out.cached_tokens:  # reported when a sequence is placed, also in a step given again
                req.metrics.cached_prompt_tokens = out.cached_tokens[rid]
            if rid in out.pending:
                continue
            req.prompt_logprobs.update(out.prompt_logprobs.get(rid, ()))
            req.num_computed_tokens += n
            token = out.sampled.get(rid)
            if token is not None:
                self._charge(req, sampled=True)
            if token is None:
                if req.num_computed_tokens >= req.num_tokens:
                    self._finish(req, RequestStatus.FINISHED_FAILED, "driver returned no token")
                continue
            self._append_token(req, token)

    # -- internals ---------------------------------------------------------------------------------

    def _urgent_first_token(self) -> Priority | None:
        """The most urgent priority among requests still before their first token that run or will be
        admitted this step (the waiting head, if a slot and its KV are free), when it outranks a decode."""
        waiting = []
        if self._num_waiting and len(self._running) < self.config.max_running:
            head = self._peek_waiting()  # what admission will take, if it can: else nobody waits for it
            if self._fits_group(head) and self._kv_used({}) + head.num_tokens <= self.config.kv_capacity \
                    and self._kv_reservable(head):
                waiting.append(head)
        fresh = [r.priority for r in (*self._running, *waiting) if r.metrics.first_token is None]
        if not fresh or not any(r.priority > min(fresh) for r in self._running):
            return None
        return min(fresh)

    def _charge(self, req: Request, sampled: bool) -> None:
        """VTC: an owner pays for a prompt when it is first admitted (the next admission of the same step
        already sees it), and for each token sampled; a recomputation after preemption is free."""
        prompt = 0
        if req.request_id not in self._charged:
            self._charged.add(req.request_id)
            prompt = len(req.prompt_token_ids)
        self.ledger.charge(req.owner, prompt, int(sampled))

    def _sort_key(self, req: Request) -> tuple[int, int]:
        return (int(req.priority), self._order[req.request_id])

    def _fits_group(self, req: Request) -> bool:
        """A step mixes adapters only where the driver can and no request's adapter is exclusive."""
        if not self._running:
            return True
        exclusive = req.exclusive_adapter or any(r.exclusive_adapter for r in self._running)
        if self.config.mixed_adapters and not exclusive:
            return True
        return all(r.adapter == req.adapter for r in self._running)

    def _kv_used(self, scheduled: dict[str, int]) -> int:
        return sum(r.num_computed_tokens + scheduled.get(r.request_id, 0) for r in self._running)

    def _kv_reservable(self, req: Request) -> bool:
        """Without preemption nothing running can be evicted to make room, so a request is admitted only
        if every running sequence can still grow to its longest (prompt + max_tokens) beside it: else all
        of them could stop one token short of the KV cache, waiting on each other forever."""
        if self.config.preemption or not self._running:
            return True

        def longest(r: Request) -> int:
            return min(len(r.prompt_token_ids) + r.sampling.max_tokens, self.config.max_model_len)

        return sum(map(longest, self._running)) + longest(req) <= self.config.kv_capacity

    def _make_room(self, req: Request, n: int, scheduled: dict[str, int], admitting: bool = False) -> int:
        """Preempt less urgent running requests until `n` more KV tokens fit (or none is left);
        returns the step budget their scheduled tokens gave back."""
        refund = 0
        while self._kv_used(scheduled) + n > self.config.kv_capacity:
            victims = [] if not self.config.preemption else [
                r for r in self._running
                if r is not req and (r.priority > req.priority if admitting else self._sort_key(r) > self._sort_key(req))
            ]
            if not victims:
                break
            victim = victims[-1]
            refund += scheduled.pop(victim.request_id, 0)
            self._preempt(victim)
        return refund

    def _preempt(self, req: Request) -> None:
        self._running.remove(req)
        self._released.append(req.request_id)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.metrics.preemptions += 1
        self._enqueue(req, front=True)

    def _enqueue(self, req: Request, *, front: bool) -> None:
        q = self._waiting[req.priority].setdefault(req.owner, deque())
        q.appendleft(req) if front else q.append(req)
        self._num_waiting += 1

    def _peek_waiting(self) -> Request:
        for prio in Priority:
            heads = [q[0] for q in self._waiting[prio].values() if q]
            if heads:
                return min(heads, key=lambda r: (self.ledger.served(r.owner), self._order[r.request_id]))
        raise LookupError("no waiting request")

    def _bypass(self, head: Request) -> Request | None:
        """A waiting request that fits the running group, admitted ahead of `head` (which does not);
        at most `max_running` times per head, so a group switch is delayed, never starved."""
        if self._bypassed.get(head.request_id, 0) >= self.config.max_running:
            return None
        for prio in Priority:
            if prio < head.priority:
                continue
            for owner in sorted(self._waiting[prio], key=self.ledger.served):
                for req in self._waiting[prio][owner]:
                    if self._fits_group(req) and req.request_id not in self._released:  # not one just preempted
                        self._bypassed[head.request_id] = self._bypassed.get(head.request_id, 0) + 1
                        return req
        return None

    def _pop_waiting(self, req: Request) -> None:
        self._bypassed.pop(req.request_id, None)
        queues = self._waiting[req.priority]
        q = queues[req.owner]
        q.remove(req)
        if not q:
            del queues[req.owner]
        self._num_waiting -= 1

    def _append_token(self, req: Request, token: int) -> None:
        now = self._clock()
        if req.metrics.first_token is None:
            req.metrics.first_token = now
        if token in self.eos_token_ids and not req.sampling.ignore_eos:
            self._finish(req, RequestStatus.FINISHED_STOPPED, None)
            return
        req.output_token_ids.append(token)
        req.metrics.output_tokens += 1
        detok = self._detok.get(req.request_id)
        if detok is not None:
            req.output_text += detok.add(token)
        status = RequestStatus.RUNNING
        stop_at = self._find_stop(req)
        if stop_at is not None:
            req.output_text = req.output_text[:stop_at]
            status = RequestStatus.FINISHED_STOPPED
        elif len(req.output_token_ids) >= req.sampling.max_tokens or req.num_tokens >= self.config.max_model_len:
            status = RequestStatus.FINISHED_LENGTH
        if status.finished:
            self._finish(req, status, None, last_token=token)
        else:
            self._emit(req, (token,))

    def _find_stop(self, req: Request) -> int | None:
        if not req.sampling.stop:
            return None
        longest = max(len(s) for s in req.sampling.stop)
        start = max(0, self._emitted[req.request_id] - longest)
        hits = [i for i in (req.output_text.find(s, start) for s in req.sampling.stop) if i >= 0]
        return min(hits, default=None)

    def _emit(self, req: Request, token_ids: tuple[int, ...], error: str | None = None) -> None:
        """Queue an event with the text that is safe to show (held back: a possible stop prefix)."""
        rid = req.request_id
        hold = 0
        if not req.finished and req.sampling.stop:
            hold = max(len(s) for s in req.sampling.stop) - 1
        end = max(self._emitted[rid], len(req.output_text) - hold)
        text = req.output_text[self._emitted[rid] : end]
        self._emitted[rid] = end
        self._outbox.append(RequestOutput(rid, text, token_ids, req.status, error))

    def _finish(self, req: Request, status: RequestStatus, error: str | None, last_token: int | None = None) -> None:
        if req.status == RequestStatus.RUNNING:
            self._running.remove(req)
            self._released.append(req.request_id)
            if status in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH):
                self._finished.add(req.request_id)
        elif req.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            self._pop_waiting(req)
        req.status = status
        req.error = error
        req.metrics.finished = self._clock()
        self._emit(req, () if last_token is None else (last_token,), error)
        rid = req.request_id
        del self._requests[rid], self._order[rid], self._emitted[rid]
        self._detok.pop(rid, None)
        self._charged.discard(rid)
        self.ledger.left(req.owner)
