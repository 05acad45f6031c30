"""Built-in NLP tasks from the seed article: classify, extract (NER), summarize, answer (RAG).

Each is a task through `register_tasks`, so the CLI (`llmos task run NAME --param k=v`), the Python
API (`kernel.run_task`) and the shell reach it alike. Structured results are grammar-constrained
(kernel/proc/structured.py) and validated, and the task builds the returned object itself, so the result
is always well-formed JSON. Tasks decode greedily (temperature 0: the same input gives the same
result), except classify's extra votes, which sample on purpose.
"""

from __future__ import annotations

import re
from typing import Optional

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.proc.structured import StructuredOutputError, parse_json, submit_json

from .hookspecs import hookimpl

DEFAULT_TYPES = ["PERSON", "ORGANIZATION", "LOCATION", "DATE"]
MAX_ENTITIES = 12
MAX_ENSEMBLE = 8  # modules in one classify ensemble


def _ask(system: str, text: str) -> list[dict[str, str]]:
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequestError("the text is empty: give some text to work on", param="text")
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def classify(kernel, text: str, labels: list[str], samples: int = 5, model: Optional[str] = None,
             adapters: Optional[list[str]] = None) -> dict:
    """Classify text into one of `labels`; scores are the share of `samples` votes for each label.

    With `adapters` (modules fine-tuned on one base), each module votes `samples` times and the label
    scores are averaged over the modules (an ensemble); `members` holds each module's own scores."""
    labels = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
    if len(labels) < 2:
        raise InvalidRequestError("classify needs at least two distinct labels", param="labels")
    if not 1 <= samples <= 16:
        raise InvalidRequestError("samples must be between 1 and 16", param="samples")
    members = list(dict.fromkeys(adapters)) if adapters else [None]
    if not 1 <= len(members) <= MAX_ENSEMBLE or not all(m is None or (isinstance(m, str) and m) for m in members):
        raise InvalidRequestError(f"adapters must name 1 to {MAX_ENSEMBLE} installed modules", param="adapters")
    schema = {"type": "object", "properties": {"label": {"enum": labels}}, "required": ["label"]}
    messages = _ask(f"Which label fits the text best: {', '.join(labels)}? "
                    'Reply as JSON: {"label": "<label>"}.', text)
    # one greedy vote plus sampled ones per member, all submitted together so the scheduler batches them
    handles = {m: [submit_json(kernel, schema, messages=messages, model=model, adapter=m, max_tokens=48,
                               owner="task:classify", temperature=0.0 if i == 0 else 0.8, seed=i)
                   for i in range(samples)] for m in members}
    votes = {m: [_vote(h.result().text, schema, labels) for h in hs] for m, hs in handles.items()}
    each = {m: {label: v.count(label) / len(v) for label in labels} for m, v in votes.items()}
    scores = {label: sum(s[label] for s in each.values()) / len(each) for label in labels}
    greedy = [v[0] for v in votes.values()]  # ties go to the label most members chose greedily
    best = max(labels, key=lambda label: (scores[label], greedy.count(label), label == greedy[0]))
    return {"label": best, "scores": scores, **({"members": each} if adapters else {})}


def _vote(reply: str, schema: dict, labels: list[str]) -> str:
    try:
        return parse_json(reply, schema)["label"]
    except StructuredOutputError:  # an unconstrained driver: the first label the reply names
        named = [(reply.lower().find(label.lower()), label) for label in labels if label.lower() in reply.lower()]
        if not named:
            raise
        return min(named)[1]


def extract(kernel, text: str, types: Optional[list[str]] = None, model: Optional[str] = None) -> dict:
    """Named entities in text: each with its type and character span [start, end)."""
    types = list(dict.fromkeys(t.strip().upper() for t in (types or DEFAULT_TYPES) if t.strip()))
    if not types:
        raise InvalidRequestError("types must name at least one entity type", param="types")
    # entities are copied from the text: no more of them than its words, none longer than it (a small
    # model asked about a text with no names otherwise fills the list with made-up ones, 800 tokens long)
    item = {"type": "object", "properties": {"text": {"type": "string", "minLength": 1,
                                                      "maxLength": max(1, min(80, len(text)))},
                                             "type": {"enum": types}}, "required": ["text", "type"]}
    schema = {"type": "object", "properties": {"entities": {"type": "array", "items": item,
                                                            "maxItems": min(MAX_ENTITIES, len(text.split()))}},
              "required": ["entities"]}
    example = ('Example: for "Angela Merkel met Apple staff in Berlin on 3 May." the answer is {"entities": '
               '[{"text": "Angela Merkel", "type": "PERSON"}, {"text": "Apple", "type": "ORGANIZATION"}, '
               '{"text": "Berlin", "type": "LOCATION"}, {"text": "3 May", "type": "DATE"}]}.')
    messages = _ask(f"Extract named entities of types {', '.join(types)} from the text. {example} "
                    "List each entity once, copied exactly from the text.", text)
    found = parse_json(submit_json(kernel, schema, messages=messages, model=model, max_tokens=800,
                                   owner="task:extract", temperature=0.0).result().text, schema)
    entities, taken = [], set()
    for ent in found["entities"]:
        span = _locate(text, ent["text"].strip(), taken)
        if span is None:
            continue  # not in the text: the model made it up
        taken.add(span)
        entities.append({"text": text[span[0]:span[1]], "type": ent["type"], "start": span[0], "end": span[1]})
    return {"entities": sorted(entities, key=lambda e: e["start"])}


def _locate(text: str, needle: str, taken: set[tuple[int, int]]) -> tuple[int, int] | None:
    if not needle:
        return None
    for m in re.finditer(re.escape(needle), text, flags=re.IGNORECASE):
        if m.span() not in taken:
            return m.span()
    return None


def summarize(kernel, text: str, max_words: Optional[int] = None, model: Optional[str] = None) -> dict:
    """Summarize text (in at most `max_words` words when given)."""
    if max_words is not None and max_words < 1:
        raise InvalidRequestError("max_words must be at least 1", param="max_words")
    limit = f" in at most {max_words} words" if max_words else " in a few sentences"
    reply = kernel.chat(_ask(f"Summarize the user's text{limit}. Reply with the summary only.", text),
                        model=model, max_tokens=min(1024, 2 * max_words + 16) if max_words else 300,
                        owner="task:summarize", temperature=0.0).text.strip()
    words = reply.split()
    if max_words and len(words) > max_words:
        reply = " ".join(words[:max_words]).rstrip(",;:") + "…"
    return {"summary": reply, "words": min(len(words), max_words or len(words))}


def answer(kernel, question: str, path: str = "/", model: Optional[str] = None) -> dict:
    """Answer a question from memory (a memfs subtree), citing the files used."""
    if not question.strip():
        raise InvalidRequestError("the question is empty", param="question")
    reply = kernel.chat([{"role": "user", "content": question}], rag=path, model=model, max_tokens=300,
                        owner="task:answer", temperature=0.0)
    return {"answer": reply.text.strip(), "sources": list(reply.sources)}


@hookimpl
def register_tasks(register):
    register("classify", classify)
    register("extract", extract)
    register("summarize", summarize)
    register("answer", answer)
