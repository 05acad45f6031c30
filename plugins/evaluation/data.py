"""Evaluation rows: what each metric reads from a JSONL file.

- perplexity: `{"text": ...}` (every token scored) or `{"prompt": ..., "completion": ...}` (the
  completion's tokens scored, given the prompt: how fine-tuning trains on such rows);
- exact / contains: `{"prompt": ...}` or `{"messages": [...]}` with `{"answer": ...}` (or
  `"completion"`); a `messages` row ending in an assistant turn (fine-tuning's format) uses that turn
  as the answer. Prompts are completed as raw text, messages as a chat, both greedily;
- keywords: the same rows; right when every word of the answer the question does not already hold
  appears in the reply ("Zorblax." answers "Ada's cat is named Zorblax." to "What is Ada's cat called?");
- choice: `{"text": ..., "label": ...}` with the candidate `"labels"` (default: every label the file
  uses), classified by the `classify` task.

`auto` picks choice when rows have a label, perplexity otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.sched.request import validate_messages

from ..jsonl import Dataset, read_rows

METRICS = ("perplexity", "exact", "contains", "keywords", "choice")


def _text(row: dict, key: str) -> bool:
    return isinstance(row.get(key), str) and bool(row[key].strip())


def scored(row: dict) -> tuple[str, str] | None:
    """(the text a perplexity row submits, the context before its scored part: "" when all is scored),
    or None when the row is neither kind; a row with `text` is always a whole text."""
    if _text(row, "text"):
        return row["text"], ""
    if isinstance(row.get("prompt"), str) and _text(row, "completion"):
        return row["prompt"] + row["completion"], row["prompt"]
    return None


def _perplexity(row: dict) -> str | None:
    if scored(row) is not None:
        return None
    return 'perplexity rows are {"text": ...} or {"prompt": ..., "completion": ...}'


def _answered(row: dict) -> str | None:
    if "messages" in row:
        try:
            messages = validate_messages(row["messages"])
        except InvalidRequestError as exc:
            return str(exc)
        if not (_text(row, "answer") or _text(row, "completion")) and \
                not (messages[-1]["role"] == "assistant" and messages[-1]["content"].strip() and len(messages) > 1):
            return "messages rows need an answer: an \"answer\" field or a last assistant turn"
        return None
    if _text(row, "prompt") and (_text(row, "answer") or _text(row, "completion")):
        return None
    return 'expected {"prompt" or "messages", "answer"} rows'


def _choice(row: dict) -> str | None:
    if not (_text(row, "text") and _text(row, "label")):
        return 'choice rows are {"text": ..., "label": ..., "labels": [...]} (labels optional)'
    labels = row.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
                               or row["label"] not in labels):
        return "labels must be a list of strings that holds the row's label"
    return None


CHECKS: dict[str, Callable[[dict], str | None]] = {"perplexity": _perplexity, "exact": _answered,
                                                    "contains": _answered, "keywords": _answered, "choice": _choice}


def load_rows(path: str | Path, metric: str = "auto") -> tuple[str, Dataset]:
    """(the metric, its rows); `auto` looks at the first row."""
    if metric not in (*METRICS, "auto"):
        raise InvalidRequestError(f"metric must be one of auto, {', '.join(METRICS)}, got {metric!r}", param="metric")
    if metric == "auto":
        first = read_rows(path, lambda row: None, param="data", what="row").examples[0]
        metric = "choice" if "label" in first else "perplexity"
    return metric, read_rows(path, CHECKS[metric], param="data", what=f"{metric} row")


def asked(row: dict[str, Any]) -> str:
    """The text of an exact/contains row's question (its prompt, or its last user turn)."""
    prompt, messages, _ = question(row)
    return prompt if messages is None else next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def question(row: dict[str, Any]) -> tuple[str | None, list[dict] | None, str]:
    """(prompt, messages, expected answer) of an exact/contains row."""
    answer = row.get("answer") if _text(row, "answer") else row.get("completion")
    if "messages" in row:
        messages = [dict(m) for m in row["messages"]]
        if answer is None:
            answer = messages.pop()["content"]
        return None, messages, answer
    return row["prompt"], None, answer


def labels_of(rows: list[dict[str, Any]]) -> list[str]:
    """Every label the rows use, in first-seen order."""
    return list(dict.fromkeys(label for row in rows for label in (row.get("labels") or [row["label"]])))
