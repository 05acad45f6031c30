"""JSON-schema constrained decoding for the torch driver, with llguidance.

Boundaries: called by drivers/torch_driver.py only; it never runs the model or samples. Per sequence a
`Constraint` holds an llguidance matcher compiled from SamplingParams.json_schema: before sampling,
`mask_rows` sets the logits of the tokens the grammar forbids to -inf in the constrained rows of a batch
(the other rows are untouched); after, `Constraint.accept` advances the matcher with the sampled token.
EOS is allowed only once the value is complete, and then nothing else is, so generation ends there. A
resumed (preempted) sequence replays its generated tokens into a fresh matcher.

Schemas pass drivers/json_grammar.py's bounds first (the llama.cpp driver's too, so a schema over them is
refused by both), and objects listing properties are closed as llama.cpp's converter closes them
(`closed_objects`), then llguidance's own compiler; either refusal is an InvalidRequestError(param=
"json_schema") naming the problem, raised at submit through `check_schema`.

Why llguidance (measured here on SmolLM2's 49,152-token vocabulary; docs/architecture.md has the
figures): one 3 MB wheel with no dependencies (xgrammar requires triton, 286 MB, on Linux x86_64),
compiles a tool-call schema in ~2.5 ms (outlines-core: 81 ms, and over a minute for a string with
maxLength 1000), ~27 us per token mask, JSON schema with $ref/recursion, formats and patterns;
lm-format-enforcer does not import with transformers 5.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from typing import Any, Sequence

import torch

from . import json_grammar

#: the JSON layout: one line, ", " between items and ": " after keys, no other whitespace (a small model
#: cannot fill its reply with blank lines, and fewer tokens are decoded)
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
#: compiled schemas kept per tokenizer (each sequence gets a copy of one)
CACHED_SCHEMAS = 64


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise json_grammar.refuse("the torch driver constrains output with llguidance, which is not installed: "
                                  "pip install 'llmos[torch]'") from None
    return llguidance


def schema_key(schema: dict[str, Any]) -> str:
    """The schema's JSON text, the cache key. Keys keep their order: output properties come in the
    order the schema lists them (a tool call's "name" before its "arguments")."""
    return json.dumps(schema)


@functools.lru_cache(maxsize=CACHED_SCHEMAS)  # thread-safe: submit threads and the engine's share it
def grammar_for(schema_json: str) -> str:
    """llguidance's grammar for JSON values matching the schema, bounded and validated; cached."""
    schema = json_grammar.closed_objects(json_grammar.check_schema(schema_json))
    matcher = _llguidance().LLMatcher
    try:
        grammar = matcher.grammar_from_json_schema(json.dumps(schema), defaults=LAYOUT)
    except ValueError as exc:
        raise json_grammar.refuse(f"unsupported by constrained decoding: {str(exc)[:200]}") from None
    problem = matcher.validate_grammar(grammar)
    if problem:
        raise json_grammar.refuse(f"unsupported by constrained decoding: {problem[:200]}")
    return grammar


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse (InvalidRequestError, param="json_schema") a schema the torch driver cannot constrain to."""
    grammar_for(schema_key(schema))


class Constraint:
    """One sequence's matcher: which tokens may come next, advanced with each sampled token."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    @property
    def error(self) -> str | None:
        """Why the matcher stopped matching (a token the grammar forbids, a parser limit), else None."""
        if not self.matcher.is_error():
            return None
        return f"json_schema: constrained decoding failed: {self.matcher.get_error().splitlines()[0][:300]}"

    def allowed(self, width: int) -> torch.Tensor:
        """A bool tensor (width,): True for the tokens the grammar allows next."""
        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # bit i of word w: token 32w+i
        return bits.reshape(-1)[:width].bool()

    def accept(self, token: int) -> None:
        """Advance past `token`; a forbidden one leaves the matcher in error (reported by `error`)."""
        self.matcher.consume_token(token)


class Grammars:
    """Constraints for one loaded tokenizer: llguidance's tokenizer is built on first use (~0.4 s for
    49k tokens), each schema compiled once against it and copied per sequence."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self._hf_tokenizer = hf_tokenizer
        self._n_vocab = max(vocab_size, len(hf_tokenizer))  # the logits' width may exceed the tokenizer's
        self._eos = sorted(eos_token_ids)
        self._tokenizer = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()

    def start(self, schema: dict[str, Any], generated: Sequence[int] = ()) -> Constraint:
        """A constraint for a new sequence, or for a resumed one brought past the tokens it `generated`.
        Raises InvalidRequestError(param="json_schema") for a schema that cannot be compiled."""
        key = schema_key(schema)
        template = self._compiled.get(key)
        if template is None:
            template = self._compile(key)
        self._compiled.move_to_end(key)
        constraint = Constraint(template.deep_copy())
        if generated:
            constraint.matcher.consume_tokens(list(generated))
        return constraint

    def _compile(self, key: str) -> Any:
        llguidance = _llguidance()
        if self._tokenizer is None:
            from llguidance.hf import from_tokenizer

            self._tokenizer = from_tokenizer(self._hf_tokenizer, n_vocab=self._n_vocab, eos_token=self._eos)
        matcher = llguidance.LLMatcher(self._tokenizer, grammar_for(key), log_level=0)
        if matcher.is_error():
            raise json_grammar.refuse(f"unsupported by constrained decoding: {matcher.get_error()[:200]}")
        self._compiled[key] = matcher
        if len(self._compiled) > CACHED_SCHEMAS:
            self._compiled.popitem(last=False)
        return matcher


def mask_rows(logits: torch.Tensor, constraints: Sequence[Constraint | None]) -> tuple[torch.Tensor, dict[int, str]]:
    """`logits` (rows x vocab) with what each constrained row's grammar forbids at -inf (a copy; rows
    without a constraint are unchanged), and row -> error for the rows whose matcher has failed."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    errors = {i: constraints[i].error for i in rows if constraints[i].error}
    if not rows:
        return logits, errors
    allowed = torch.stack([constraints[i].allowed(logits.shape[1]) for i in rows]).to(logits.device)
    index = torch.tensor(rows, device=logits.device)
    masked = logits.clone()
    masked[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return masked, errors
