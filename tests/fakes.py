"""A deterministic test driver: characters are tokens, and the next token is a function of the
sequence so far. Used by scheduler, engine and kernel tests that need no model."""

from __future__ import annotations

from typing import Any, Sequence

from llmos.drivers.base import Driver, DriverOptions, ModelInfo, ProbeResult
from llmos.kernel.sched.interface import DriverOutput, SchedulerOutput

EOS = 0


def next_token(tokens: Sequence[int]) -> int:
    """'a'..'z' cycling from the last token; deterministic for a given history."""
    return ord("a") + (sum(tokens) + len(tokens)) % 26


def fake_execute(state: dict[str, list[int]], batch: SchedulerOutput, eos_after: dict[str, int] | None = None) -> DriverOutput:
    """Reference execution of one step over `state` (request id -> [tokens, n_computed])."""
    out = DriverOutput()
    for rid in batch.released:
        state.pop(rid, None)
    for new in batch.new:
        state[new.request_id] = [list(new.token_ids), 0]
    for rid, n in batch.num_scheduled_tokens.items():
        tokens, done = state[rid]
        done += n
        state[rid][1] = done
        assert done <= len(tokens), "scheduled past the known tokens"
        if done == len(tokens):
            tok = next_token(tokens)
            if eos_after and len(tokens) >= eos_after.get(rid, 10**9):
                tok = EOS
            tokens.append(tok)
            out.sampled[rid] = tok
    return out


class FakeDriver(Driver):
    name = "fake"
    formats = frozenset({"gguf"})
    fail_next = False  # raise inside the next execute that computes tokens (fault injection)
    loads = 0

    @classmethod
    def probe(cls) -> ProbeResult:
        return ProbeResult(True, ("cpu",))

    def __init__(self, spec, options: DriverOptions) -> None:
        super().__init__(spec, options)
        self.state: dict[str, list] = {}

    def load(self, progress=None) -> ModelInfo:
        type(self).loads += 1
        if progress:
            progress(0.5)
        self.state = {}
        self.info = ModelInfo(context_length=512, kv_capacity=4096, max_seqs=self.options.max_seqs,
                              eos_token_ids=frozenset({EOS}), vocab_size=256, device="cpu",
                              has_chat_template=False, memory_bytes=1000)
        return self.info

    def execute(self, batch: SchedulerOutput) -> DriverOutput:
        if type(self).fail_next and batch.num_scheduled_tokens:
            type(self).fail_next = False
            raise RuntimeError("injected fault")
        return fake_execute(self.state, batch)

    def unload(self) -> None:
        self.state = {}

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class ScriptedDriver(FakeDriver):
    """Answers each chat request with `reply(prompt_text)` (one character per step, then EOS): lets
    agent tests script what the "model" says. Records every prompt and JSON schema it was given."""

    name = "scripted"
    supports_json_schema = True
    reply = staticmethod(lambda prompt: "")
    prompts: list[str] = []
    schemas: list[Any] = []
    delay = 0.0  # seconds per step: makes a generation last long enough to be killed

    def load(self, progress=None) -> ModelInfo:
        from dataclasses import replace

        self.info = replace(super().load(progress), context_length=32768, kv_capacity=262144)
        return self.info

    def execute(self, batch: SchedulerOutput) -> DriverOutput:
        import time

        time.sleep(type(self).delay)
        out = DriverOutput()
        for rid in batch.released:
            self.state.pop(rid, None)
        for new in batch.new:
            prompt = self.decode(new.token_ids)
            type(self).prompts.append(prompt)
            type(self).schemas.append(new.sampling.json_schema)
            self.state[new.request_id] = [list(type(self).reply(prompt)), 0]
        for rid, _n in batch.num_scheduled_tokens.items():
            script, done = self.state[rid]
            out.sampled[rid] = ord(script[done]) if done < len(script) else EOS
            self.state[rid][1] = done + 1
        return out
