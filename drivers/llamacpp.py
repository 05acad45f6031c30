"""The llama.cpp driver: many sequences per step through llama-cpp-python's batch API.

Each running request owns a llama.cpp sequence id ("slot") in one context whose KV cache is shared
by all slots (kv_unified). A step packs every scheduled token of every sequence into llama_batch
calls of at most n_batch tokens; rows that reach the end of their known tokens get logits and are
sampled by their own sampler chain. Requests join and leave between steps (continuous batching).

Prefix reuse: a finished sequence's slot keeps its KV as a cache entry (LRU). A new sequence whose
prompt shares a prefix with any resident sequence copies that prefix (`seq_cp`, no compute) and
computes only the rest. New sequences of the same step that share a prefix are split in two
phases, so the second one copies what the first just computed (slots and cache: llamacpp_slots.py).
A chat session's turn also saves its KV to disk when it ends, and the session's next turn restores it,
after a restart too (llamacpp_sessions.py, session_kv.py).

Interrupts: a step that is one llama_decode call of one ubatch -- decodes, prefill chunks and new
sequences alike -- can be aborted mid-graph (`interrupt()`, when a more urgent request arrives:
llamacpp_lib.AbortSwitch); llama.cpp removes that ubatch's positions from the KV cache, the sequences'
positions are put back (a new sequence keeps its slot and the prefix it copied) and the step is reported
`pending`, so the scheduler gives it again. The step after an aborted one always completes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

from llmos.kernel.sched.detokenizer import ByteDetokenizer, Detokenizer
from llmos.kernel.errors import ModelLoadError
from llmos.kernel.sched.interface import DriverOutput, SchedulerOutput
from llmos.kernel.models.registry import check_gguf
from llmos.kernel.models.placement import Placement

from .base import Driver, DriverOptions, ModelInfo, ProbeResult, ProgressCallback
from .llamacpp_sessions import SessionSaves
from .llamacpp_slots import CacheEntry, SlotCache, SeqState
from .llamacpp_swap import SwapArea
from .session_kv import SessionKV

def offload(where: Placement) -> tuple[int, int]:
    """(n_gpu_layers, main_gpu) for a model's placement; a GPU asked of a CPU-only build is refused."""
    from . import llamacpp_lib as lib

    main_gpu = int(where.device.split(":")[1]) if where.device.startswith("cuda:") else where.main_gpu
    if where.cpu_only:
        return 0, main_gpu
    if not lib.gpu_offload():
        if where.device != "auto" or where.n_gpu_layers not in (None, 0):
            raise ModelLoadError(
                f"the model's placement asks for the GPU (device = {where.device!r}, n_gpu_layers = "
                f"{where.n_gpu_layers}), but this llama-cpp-python {lib.llama_cpp.__version__} was built for the "
                f"CPU only: rebuild it with `make clean install` where nvcc and an NVIDIA GPU are found (LLMOS_CUDA=1 "
                f"forces it), or set device = \"cpu\" in its [models.NAME] table")
        return 0, main_gpu
    return (-1 if where.n_gpu_layers is None else where.n_gpu_layers), main_gpu


class LlamaCppDriver(SlotCache, SessionSaves, Driver):
    name = "llamacpp"
    formats = frozenset({"gguf"})
    supports_lora = True
    supports_json_schema = True  # grammar-constrained sampling
    supports_prompt_logprobs = True
    compute_group = "llama.cpp"  # every model runs on the process's one llama.cpp thread (llamacpp_lib.on_device)
    mixed_adapters = False  # llama.cpp applies LoRA adapters per context, not per sequence

    @classmethod
    def probe(cls) -> ProbeResult:
        try:
            from . import llamacpp_lib as lib
        except Exception as exc:  # noqa: BLE001 - a broken install must not crash probing
            return ProbeResult(False, (), f"llama-cpp-python is not importable: {exc}")
        devices = ("cpu", "gpu") if lib.gpu_offload() else ("cpu",)
        return ProbeResult(True, devices)

    @classmethod
    def check_json_schema(cls, schema: dict[str, Any]) -> None:
        from .llamacpp_lib import json_schema_grammar

        json_schema_grammar(schema)  # bounded, converted and parsed by llama.cpp now; cached for the step

    def __init__(self, spec, options: DriverOptions) -> None:
        super().__init__(spec, options)
        self._model = None
        self._seqs: dict[str, SeqState] = {}
        self._cache: OrderedDict[int, CacheEntry] = OrderedDict()  # slot -> its KV, least recently used first
        self._adapters: dict[str, Any] = {}  # name -> llama_adapter_lora pointer
        self._adapter_paths: dict[str, Path] = {}  # kept across reloads
        self._active_adapter: str | None = None
        self._free: list[int] = []
        self._swap = SwapArea(0)  # made at load: swapped state is only valid for the context that saved it
        self._session_kv = SessionKV(None, 0, 0)  # chat sessions' KV on disk (made at load: keyed by the model)
        self._session_read_s = 0.0  # the last saved-session read (llamacpp_sessions.py)
        self._formatter = None
        self._batch = None
        self._aborted_last = False  # the last step was aborted: the next one is not (progress)
        self.prefix_hits = 0
        self.prefix_tokens_reused = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self, progress: ProgressCallback | None = None) -> ModelInfo:
        from . import llamacpp_lib as lib

        path = self.spec.path
        check_gguf(path)
        opts = self.options
        n_slots = opts.max_seqs * 2 if opts.prefix_cache else opts.max_seqs
        n_gpu_layers, main_gpu = offload(self.spec.options.get("placement") or Placement())
        self._model = lib.on_device(
            lib.LlamaModel, str(path), n_ctx=opts.n_ctx, n_batch=opts.max_batched_tokens, n_seq_max=n_slots,
            n_threads=opts.n_threads, progress=progress, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu,
        )
        m = self._model
        self._free = list(range(n_slots - 1, -1, -1))
        self._swap = SwapArea(opts.kv_swap_bytes, opts.kv_swap_disk_bytes, opts.extra.get("swap_dir"))
        self._session_kv = self._open_session_kv(path, m.kv_layout)
        self._batch = lib.Batch(m.n_batch)
        self._formatter = m.chat_formatter()
        self._active_adapter = None
        for name, apath in list(self._adapter_paths.items()):  # a reload keeps the adapters
            self._adapters[name] = self._init_adapter(apath)
        self.info = ModelInfo(
            context_length=min(m.n_ctx_train or m.n_ctx, m.n_ctx),
            kv_capacity=m.n_ctx,
            max_seqs=opts.max_seqs,
            eos_token_ids=m.eog_ids,
            vocab_size=m.n_vocab,
            device="gpu" if n_gpu_layers else "cpu",
            has_chat_template=self._formatter is not None,
            memory_bytes=m.size_bytes,
        )
        return self.info

    def unload(self) -> None:
        from .llamacpp_lib import on_device

        on_device(self._unload)

    def _unload(self) -> None:
        for seq in self._seqs.values():
            seq.sampler.free()
        self._seqs.clear()
        self._cache.clear()
        self._swap.clear()
        self._session_kv.close()  # its pending writes end first: the next load (or process) finds them
        self._adapters.clear()  # freed with the model
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        if self._model is not None:
            self._model.close()
            self._model = None

    # -- tokenizer -----------------------------------------------------------------------------

    def _require(self):
        if self._model is None:
            raise ModelLoadError(f"model {self.spec.name} is not loaded")
        return self._model

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self._require().tokenize(text, add_special=add_special)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._require().detokenize(token_ids)

    def detokenizer(self, prompt_ids: Sequence[int]) -> Detokenizer:
        model = self._require()
        return ByteDetokenizer(model.piece)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        if self._formatter is None:  # a base model without a template: a plain transcript
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:"
        return self._formatter(messages=messages).prompt

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.apply_chat_template(messages)
        model = self._require()
        bos = model.bos_text
        has_bos = bool(bos) and text.startswith(bos)
        return model.tokenize(text, add_special=not has_bos)

    # -- one step ------------------------------------------------------------------------------

    def execute(self, batch: SchedulerOutput) -> DriverOutput:
        from .llamacpp_lib import on_device

        return on_device(self._execute, batch)

    # -- adapters (GGUF LoRA) --------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> int:
        from .llamacpp_lib import on_device

        self._adapters[name] = on_device(self._init_adapter, path)
        self._adapter_paths[name] = path
        return path.stat().st_size

    def _init_adapter(self, path: Path):
        ptr = self._require().lora_init(str(path))
        if ptr is None:
            raise ModelLoadError(f"llama.cpp refused the LoRA adapter {path}: it does not match "
                                 f"{self.spec.name}'s architecture and shapes, or the file is corrupt")
        return ptr

    def unload_adapter(self, name: str) -> None:
        from .llamacpp_lib import on_device

        ptr = self._adapters.pop(name)
        self._adapter_paths.pop(name, None)

        def free() -> None:
            if self._active_adapter == name:
                self._use_adapter(None)
            self._swap.discard_adapter(name)
            for slot in [s for s, e in self._cache.items() if e.adapter == name]:
                del self._cache[slot]
                self._model.seq_rm(slot, 0, -1)
                self._free.append(slot)
            self._model.lora_free(ptr)

        on_device(free)

    def _use_adapter(self, name: str | None) -> None:
        if name != self._active_adapter:
            self._model.set_lora(None if name is None else self._adapters[name])
            self._active_adapter = name

    # -- one step (on the llama.cpp thread) --------------------------------------------------------

    def _execute(self, batch: SchedulerOutput) -> DriverOutput:
        model = self._require()
        out = DriverOutput()
        # 1. Release finished/preempted sequences (their KV stays as prefix cache).
        for rid in batch.released:
            self._release(rid, rid in batch.finished)
        # The scheduler groups steps by adapter: every scheduled sequence uses the same one.
        adapters = {n.adapter for n in batch.new} | {
            self._seqs[r].adapter for r in batch.num_scheduled_tokens if r in self._seqs}
        if len(adapters) > 1:
            raise RuntimeError(f"one step mixes adapters {sorted(map(str, adapters))}: llama.cpp cannot")
        if adapters:
            self._use_adapter(next(iter(adapters)))
        # 2. Place new sequences into slots, reusing resident prefixes.
        deferred: dict[str, str] = {}  # rid -> same-step donor rid (second phase)
        for new in batch.new:
            donor = self._same_step_donor(new, batch)
            if donor is not None:
                deferred[new.request_id] = donor
                continue
            self._place(new, out)
        # 3. Compute: phase one, then deferred sequences that copy a prefix computed in phase one.
        first = [rid for rid in batch.num_scheduled_tokens if rid not in deferred]
        live = [] if deferred else self._interruptible(batch, first)
        if live:
            return self._compute_interruptible(model, batch, first, live, out)
        self._compute(model, batch, first, out)
        if deferred:
            by_id = {n.request_id: n for n in batch.new}
            for rid, donor in deferred.items():
                self._place(by_id[rid], out, donor=self._seqs.get(donor))
            self._compute(model, batch, list(deferred), out)
        return out

    def interrupt(self) -> bool:
        """Abort the step in flight, if it can be redone exactly (the engine calls this when a more urgent
        request arrives: it then waits a graph node, not a step)."""
        model = self._model
        return model is not None and model.abort.pull()

    def _interruptible(self, batch: SchedulerOutput, rids: list[str]) -> list[str]:
        """The sequences of a step that can be aborted (none: it cannot). A step that is one llama_decode of
        one ubatch (n_ubatch == n_batch) can: when it is aborted llama.cpp removes exactly that ubatch's
        positions, so putting the sequences' positions back redoes it exactly. Sequences that failed to be
        placed are left out of it. The step after an aborted one always runs to its end: interrupts can
        slow other work, never stop it."""
        if self._aborted_last:
            self._aborted_last = False
            return []
        live = [r for r in rids if r in self._seqs]
        return live if sum(batch.num_scheduled_tokens[r] for r in live) <= self._batch.capacity else []

    def _compute_interruptible(self, model, batch: SchedulerOutput, rids: list[str], live: list[str],
                               out: DriverOutput) -> DriverOutput:
        from .llamacpp_lib import DecodeAborted

        undo = [(self._seqs[r], self._seqs[r].sched_pos, self._seqs[r].n_past) for r in live]
        model.abort.arm(True)
        try:
            self._compute(model, batch, rids, out)
        except DecodeAborted:  # nothing of this step is kept: the scheduler gives it again
            for seq, sched_pos, n_past in undo:
                seq.sched_pos, seq.n_past = sched_pos, n_past
            out.sampled.clear()
            out.prompt_logprobs.clear()
            out.pending = frozenset(live)
            self._aborted_last = True
        finally:
            model.abort.arm(False)
        return out

    def _compute(self, model, batch: SchedulerOutput, rids: list[str], out: DriverOutput) -> None:
        work: list[tuple[SeqState, int, int, bool]] = []  # seq, start, end, wants logits
        for rid in rids:
            seq = self._seqs.get(rid)
            if seq is None:
                out.failed.setdefault(rid, "the driver has no state for this sequence")
                continue
            end = seq.sched_pos + batch.num_scheduled_tokens[rid]
            seq.sched_pos = end
            start = seq.n_past
            if start < end:
                work.append((seq, start, end, end == len(seq.tokens)))
        self._ensure_kv_room(sum(e - s for _, s, e, _ in work))
        pending: list[tuple[SeqState, int]] = []  # sequences to sample after the current decode
        scoring: list[tuple[SeqState, int, int]] = []  # (sequence, batch row, position of the token it predicts)
        b = self._batch
        b.clear()
        for seq, start, end, wants in work:
            for pos in range(start, end):
                if b.n == b.capacity:
                    self._flush(model, pending, out, scoring)
                last = pos == end - 1
                scores = pos + 1 < seq.scored
                idx = b.add(seq.tokens[pos], pos, seq.slot, (wants and last) or scores)
                if wants and last:
                    pending.append((seq, idx))
                if scores:
                    scoring.append((seq, idx, pos + 1))
            seq.n_past = end
        if b.n:
            self._flush(model, pending, out, scoring)

    def _flush(self, model, pending: list[tuple[SeqState, int]], out: DriverOutput,
               scoring: list[tuple[SeqState, int, int]]) -> None:
        started, n_tokens = time.perf_counter(), self._batch.n
        rc = self._batch.decode(model)
        if rc == 0:  # what recomputing costs here: the swap area weighs restores against it
            self._swap.costs.computed(n_tokens, time.perf_counter() - started)
        if rc == 1:  # no room in the KV cache: drop every cached prefix and retry once
            self._evict_cache(len(self._cache))
            rc = self._batch.decode(model)
        if rc != 0:
            self._batch.clear()
            if rc == 2:
                from .llamacpp_lib import DecodeAborted

                raise DecodeAborted()
            raise RuntimeError(f"llama_decode failed with code {rc}")
        if scoring:  # before sampling, which may change the logits it reads
            lps = model.token_logprobs([(idx, seq.tokens[pos]) for seq, idx, pos in scoring])
            for (seq, _, pos), lp in zip(scoring, lps):
                out.prompt_logprobs.setdefault(seq.request_id, []).append((pos, lp))
            scoring.clear()
        for seq, idx in pending:
            token = seq.sampler.sample(model, idx)
            seq.tokens.append(token)
            out.sampled[seq.request_id] = token
        pending.clear()
        self._batch.clear()

    def swapped(self) -> dict[str, dict[str, Any]]:
        return self._swap.by_request()

    def stats(self) -> dict[str, Any]:
        return {
            "active_sequences": len(self._seqs),
            "cached_prefixes": len(self._cache),
            "prefix_hits": self.prefix_hits,
            "prefix_tokens_reused": self.prefix_tokens_reused,
            **self._swap.stats(),
            **self._session_kv.stats(),
        }
