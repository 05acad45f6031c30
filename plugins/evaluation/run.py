"""Run an evaluation through the kernel: every row of one metric against one target (a model, a
model with a module, or for `choice` an ensemble of modules), requests submitted in windows so the
scheduler batches them, and one figure out: perplexity (lower is better) or accuracy.

1. perplexity: each row is submitted with `prompt_logprobs` (computed whole, never from the prefix
   cache); the scored tokens' negative log-likelihoods are summed over the file: exp(sum / tokens);
2. exact / contains / keywords: a greedy completion per row, compared after normalizing case, spaces
   and surrounding punctuation (keywords: the answer's words the question lacks all appear);
3. choice: the `classify` task per row (one greedy, grammar-constrained vote per module).
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from llmos.kernel.errors import InvalidRequestError

from .data import asked, labels_of, question, scored

Progress = Callable[[int, int], None]
#: rows kept as examples of what a target got wrong
MAX_MISSES = 10


@dataclass
class EvalResult:
    target: str
    metric: str
    score: float  # perplexity, or accuracy in [0, 1]
    rows: int
    seconds: float
    tokens: int = 0  # perplexity: tokens scored
    loss: float | None = None  # perplexity: mean negative log-likelihood per token (nats)
    misses: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    model: str
    adapters: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Target":
        """`MODEL`, `MODEL:MODULE`, or for choice an ensemble `MODEL:MOD1+MOD2`."""
        model, sep, mods = text.rpartition(":")
        if not sep or "/" in mods or not model:
            return cls(text)
        adapters = tuple(m for m in mods.split("+"))
        if not all(adapters):
            raise InvalidRequestError(f"{text!r}: expected MODEL, MODEL:MODULE or MODEL:MOD1+MOD2", param="targets")
        return cls(model, adapters)

    def __str__(self) -> str:
        return f"{self.model}:{'+'.join(self.adapters)}" if self.adapters else self.model

    def check(self, metric: str) -> "Target":
        if len(self.adapters) > 1 and metric != "choice":
            raise InvalidRequestError(f"{self}: an ensemble of modules is evaluated with --metric choice only",
                                      param="targets")
        return self


def evaluate(kernel, target: Target, metric: str, rows: list[dict[str, Any]], *, lines: tuple[int, ...] = (),
             progress: Progress = lambda _done, _total: None, window: int = 16, max_tokens: int = 64) -> EvalResult:
    target.check(metric)
    if not rows:
        raise InvalidRequestError("no rows to evaluate", param="data")
    started = time.monotonic()
    lines = lines or tuple(range(1, len(rows) + 1))
    adapter = target.adapters[0] if target.adapters else None
    if metric == "perplexity":
        result = _perplexity(kernel, target.model, adapter, rows, progress, window)
    elif metric == "choice":
        result = _choice(kernel, target, rows, lines, progress, window)
    else:
        result = _answers(kernel, target.model, adapter, metric, rows, lines, progress, window, max_tokens)
    result.target, result.seconds = str(target), time.monotonic() - started
    return result


def _windowed(submit: Callable[[dict], Any], rows: list[dict], window: int, progress: Progress):
    """Yield (row index, handle's result) in row order, with at most `window` requests in flight."""
    pending: deque = deque()
    for i, row in enumerate(rows):
        pending.append((i, submit(row)))
        if len(pending) >= window:
            j, handle = pending.popleft()
            yield j, handle.result()
            progress(j + 1, len(rows))
    while pending:
        j, handle = pending.popleft()
        yield j, handle.result()
        progress(j + 1, len(rows))


def _perplexity(kernel, model: str, adapter: str | None, rows, progress, window) -> EvalResult:
    # 1. Each row's text, and how many of its leading tokens are context (a prompt's), not scored.
    parts = {id(row): scored(row) for row in rows}
    skips = [len(kernel.tokenize(parts[id(row)][1], model=model)) if parts[id(row)][1] else 1 for row in rows]

    def submit(row: dict):
        return kernel.submit(parts[id(row)][0], model=model, adapter=adapter, max_tokens=1, temperature=0.0,
                             prompt_logprobs=True, owner="eval")

    nll, tokens = 0.0, 0
    for i, done in _windowed(submit, rows, window, progress):
        picked = done.prompt_logprobs[max(skips[i], 1) - 1:]
        nll -= sum(picked)
        tokens += len(picked)
    if not tokens:
        raise InvalidRequestError("no token to score: the rows are one token long", param="data")
    loss = nll / tokens
    return EvalResult("", "perplexity", math.exp(loss), len(rows), 0.0, tokens, loss)


def normalize(text: str) -> str:
    """Case, runs of spaces and the punctuation around the text do not count."""
    return re.sub(r"\s+", " ", text.casefold()).strip().strip(".,;:!?\"'`*()[] ")


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
#: words that carry no answer of their own
STOPWORDS = frozenset("a an the is are was were be been it its it's this that these those of to in on at for by "
                      "with and or but as from his her their our your my its he she they we you i named called "
                      "name".split())


def words(text: str) -> set[str]:
    """Casefolded words, possessives cut ("Ada's" is "ada")."""
    return {w.casefold().removesuffix("'s") for w in _WORD.findall(text.replace("\u2019", "'"))}


def keywords(answer: str, question_text: str) -> set[str]:
    """The answer's words that the question does not already hold (none left: all its words)."""
    return (words(answer) - words(question_text) - STOPWORDS) or words(answer)


def correct(metric: str, reply: str, answer: str, question_text: str) -> bool:
    if metric == "exact":
        return normalize(reply) == normalize(answer)
    if metric == "contains":
        return normalize(answer) in normalize(reply)
    return keywords(answer, question_text) <= words(reply)


def _answers(kernel, model, adapter, metric, rows, lines, progress, window, max_tokens) -> EvalResult:
    def submit(row: dict):
        prompt, messages, _ = question(row)
        return kernel.submit(prompt, messages=messages, model=model, adapter=adapter, max_tokens=max_tokens,
                             temperature=0.0, owner="eval")

    right, misses = 0, []
    for i, done in _windowed(submit, rows, window, progress):
        ok = correct(metric, done.text, question(rows[i])[2], asked(rows[i]))
        right += ok
        if not ok and len(misses) < MAX_MISSES:
            misses.append({"line": lines[i], "expected": question(rows[i])[2], "got": done.text.strip()[:200]})
    return EvalResult("", metric, right / len(rows), len(rows), 0.0, misses=misses)


def _choice(kernel, target: Target, rows, lines, progress, window) -> EvalResult:
    everyone = labels_of(rows)

    def classify(row: dict) -> str:
        params = {"text": row["text"], "labels": row.get("labels") or everyone, "samples": 1, "model": target.model}
        if target.adapters:
            params["adapters"] = list(target.adapters)
        return kernel.run_task("classify", params)["label"]

    right, misses, done = 0, [], 0
    with ThreadPoolExecutor(max_workers=max(1, min(window, 8))) as pool:
        for i, label in enumerate(pool.map(classify, rows)):
            ok = label == rows[i]["label"]
            right += ok
            if not ok and len(misses) < MAX_MISSES:
                misses.append({"line": lines[i], "expected": rows[i]["label"], "got": label})
            done += 1
            progress(done, len(rows))
    return EvalResult("", "choice", right / len(rows), len(rows), 0.0, misses=misses)
