"""The remote driver: scale past one machine by forwarding requests to OpenAI-compatible servers.

A model configured with `nodes = [...]` in llmos.toml (kernel/models/registry.py `remote_spec`) is served
by vLLM, llama.cpp's server, Ollama or another llmos. The kernel's scheduler still owns admission:
priority, fair share, queue bound, deadlines and cancellation work as for local models, and at most
`max_concurrency` requests per node are in flight. The node pool (drivers/remote_nodes.py) balances
by load and health and retries on another node when one fails before its first token.

Token ids here are handles into a driver-local table, not a vocabulary: a prompt is one handle
(the text or the chat messages) followed by filler ids so its length approximates the real token
count (about 4 characters per token), and each streamed text delta is one sampled "token". A step
samples one delta per sequence whose stream has one ready and reports the others `pending`.
Generations cannot be resumed elsewhere, so the scheduler never preempts them (`preemptible`).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from llmos.kernel.errors import ModelLoadError
from llmos.kernel.sched.interface import DriverOutput, NewSequence, SchedulerOutput

from .base import Driver, DriverOptions, ModelInfo, ProbeResult, ProgressCallback
from .remote_nodes import END, Failure, NodePool, RemoteStream

EOS = 0
FILL = 1
#: handles kept for decoding (prompts and deltas); old ones are dropped first
MAX_PIECES = 65536
#: longest wait inside one step for a delta when none is ready
STEP_WAIT_S = 0.05


class _Pieces:
    """Thread-safe handle table: id -> text (or chat messages)."""

    def __init__(self) -> None:
        self._items: OrderedDict[int, Any] = OrderedDict()
        self._ids = itertools.count(2)
        self._lock = threading.Lock()

    def add(self, item: Any) -> int:
        with self._lock:
            pid = next(self._ids)
            self._items[pid] = item
            while len(self._items) > MAX_PIECES:
                self._items.popitem(last=False)
            return pid

    def get(self, pid: int) -> Any:
        return self._items.get(pid)


class _PieceDetokenizer:
    def __init__(self, pieces: _Pieces) -> None:
        self._pieces = pieces

    def add(self, token_id: int) -> str:
        item = self._pieces.get(token_id)
        return item if isinstance(item, str) else ""


@dataclass
class _Seq:
    stream: RemoteStream | None
    known: int  # tokens the scheduler knows (prompt + sampled)
    computed: int = 0
    failure: str | None = None
    ended: bool = False


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _render(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)


class RemoteDriver(Driver):
    name = "remote"
    formats = frozenset({"openai"})
    supports_json_schema = True  # forwarded as response_format (vLLM, llama.cpp server, llmos)
    preemptible = False

    @classmethod
    def probe(cls) -> ProbeResult:
        return ProbeResult(True, ("remote",))

    def __init__(self, spec, options: DriverOptions) -> None:
        super().__init__(spec, options)
        self._pieces = _Pieces()
        self._seqs: dict[str, _Seq] = {}
        self._ready = threading.Condition()
        self.pool: NodePool | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def load(self, progress: ProgressCallback | None = None) -> ModelInfo:
        opts = self.spec.options
        self.pool = NodePool(list(opts["nodes"]), int(opts["max_concurrency"]), float(opts["timeout"]))
        problems = self.pool.check(opts["remote_model"])
        if len(problems) == len(self.pool.nodes):
            self.pool.close()
            raise ModelLoadError(f"no remote node serves {opts['remote_model']} for {self.spec.name}: "
                                 + "; ".join(problems) + " (start the servers or fix nodes in llmos.toml)")
        if progress:
            progress(1.0)
        ctx = int(opts["context_length"])
        self.info = ModelInfo(context_length=ctx, kv_capacity=ctx * self.pool.capacity,
                              max_seqs=self.pool.capacity, eos_token_ids=frozenset({EOS}), vocab_size=0,
                              device=f"remote ({len(self.pool.nodes)} nodes)", has_chat_template=True,
                              memory_bytes=0)
        return self.info

    def unload(self) -> None:
        for seq in self._seqs.values():
            if seq.stream is not None:
                seq.stream.cancel()
        self._seqs.clear()
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # -- text <-> handles ------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [self._pieces.add(text)] + [FILL] * (_approx_tokens(text) - 1)

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        messages = [dict(m) for m in messages]
        return [self._pieces.add(messages)] + [FILL] * (_approx_tokens(_render(messages)) - 1)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        return _render(messages)

    def decode(self, token_ids: Sequence[int]) -> str:
        parts = []
        for tid in token_ids:
            item = self._pieces.get(tid)
            parts.append(_render(item) if isinstance(item, list) else item if isinstance(item, str) else "")
        return "".join(parts)

    def detokenizer(self, prompt_ids: Sequence[int]) -> _PieceDetokenizer:
        return _PieceDetokenizer(self._pieces)

    # -- one step --------------------------------------------------------------------------------------

    def execute(self, batch: SchedulerOutput) -> DriverOutput:
        # 1. Drop released sequences: closing the stream makes the node cancel its request.
        for rid in batch.released:
            seq = self._seqs.pop(rid, None)
            if seq is not None and seq.stream is not None:
                seq.stream.cancel()
        # 2. Start a stream for each new sequence.
        for new in batch.new:
            self._seqs[new.request_id] = self._start(new)
        # 3. Wait briefly unless some scheduled sequence can already advance.
        scheduled = batch.num_scheduled_tokens
        with self._ready:
            if not any(self._can_advance(rid, n) for rid, n in scheduled.items()):
                self._ready.wait(STEP_WAIT_S)
        # 4. One delta per sequence that has one; the others stay pending.
        out = DriverOutput()
        pending = set()
        for rid, n in scheduled.items():
            seq = self._seqs[rid]
            if seq.failure is not None:
                out.failed[rid] = seq.failure
                continue
            if seq.computed + n < seq.known:  # a partial prefill chunk: nothing to sample yet
                seq.computed += n
                continue
            item = END if seq.ended else (seq.stream.events.popleft() if seq.stream.events else None)
            if item is None:
                pending.add(rid)
                continue
            seq.computed += n
            seq.known += 1
            if item is END:
                seq.ended = True
                out.sampled[rid] = EOS
            elif isinstance(item, Failure):
                out.failed[rid] = item.message
            else:
                out.sampled[rid] = self._pieces.add(item)
        out.pending = frozenset(pending)
        return out

    def _can_advance(self, rid: str, n: int) -> bool:
        seq = self._seqs[rid]
        return (seq.failure is not None or seq.ended or seq.computed + n < seq.known
                or bool(seq.stream and seq.stream.events))

    def _notify(self) -> None:
        with self._ready:
            self._ready.notify_all()

    def _start(self, new: NewSequence) -> _Seq:
        seq = _Seq(stream=None, known=len(new.token_ids))
        if new.prompt_len and new.prompt_len < len(new.token_ids):
            seq.failure = "a remote generation cannot be resumed after it was interrupted; retry the request"
            return seq
        prompt = self._pieces.get(new.token_ids[0]) if new.token_ids else None
        if prompt is None:
            seq.failure = "the prompt of this request expired from the remote driver's table; retry it"
            return seq
        chat = isinstance(prompt, list)
        payload = _payload(new, chat, prompt)
        seq.stream = RemoteStream(self.pool, self.spec.options["remote_model"], chat, payload, self._notify)
        seq.stream.start()
        return seq

    def stats(self) -> dict[str, Any]:
        return {"active_sequences": len(self._seqs),
                "nodes": [n.as_dict() for n in self.pool.nodes] if self.pool else []}


def _payload(new: NewSequence, chat: bool, prompt: Any) -> dict[str, Any]:
    s = new.sampling
    body: dict[str, Any] = {"max_tokens": s.max_tokens}
    # a field neither the request nor the model's table set stays unset: the node applies its defaults
    for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        if getattr(s, key) is not None:
            body[key] = getattr(s, key)
    if s.repetition_penalty is not None:  # llama.cpp's server name (vLLM and llmos serve read the other)
        body["repeat_penalty"] = s.repetition_penalty
    body["messages" if chat else "prompt"] = prompt
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.json_schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": s.json_schema, "strict": True}}
    return body
