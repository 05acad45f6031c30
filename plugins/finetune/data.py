"""Fine-tuning data: JSONL of chat examples or prompt/completion pairs, encoded with loss masks.

Each line is `{"messages": [{"role": ..., "content": ...}, ...]}` (loss on the assistant turns) or
`{"prompt": "...", "completion": "..."}` (loss on the completion). Bad rows are reported with their
line number and skipped; a missing, unreadable or empty file (no usable row) stops before training.
Chat examples without a system message get the kernel's default system prompt, as requests do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.sched.request import validate_messages

IGNORE = -100  # label of tokens that carry no loss


class FinetuneDataError(InvalidRequestError):
    """The training data cannot be used; the message names the file (and line)."""

    code = "invalid_training_data"


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Dataset:
    path: Path
    examples: list[dict[str, Any]]
    errors: list[RowError]
    sha256: str


def load_jsonl(path: str | Path, *, param: str = "data") -> Dataset:
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FinetuneDataError(f"cannot read {path}: {exc.strerror or exc}", param=param) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FinetuneDataError(f"{path} is not UTF-8 text (byte {exc.start})", param=param) from exc
    examples, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            errors.append(RowError(number, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        problem = _check_row(row)
        if problem:
            errors.append(RowError(number, problem))
        else:
            examples.append(row)
    if not examples:
        detail = f"; first problems: {', '.join(map(str, errors[:3]))}" if errors else ""
        raise FinetuneDataError(f"{path} has no usable training example{detail}", param=param)
    return Dataset(path, examples, errors, hashlib.sha256(raw).hexdigest())


def _check_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    if "messages" in row:
        try:
            messages = validate_messages(row["messages"])
        except InvalidRequestError as exc:
            return str(exc)
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            return "messages have no assistant turn to learn from"
        return None
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return None if row["completion"].strip() else "completion is empty"
    return 'expected {"messages": [...]} or {"prompt": "...", "completion": "..."}'


def encode(row: dict[str, Any], tokenizer, *, system_prompt: str | None, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE outside the assistant/completion tokens), cut to max_len."""
    if "messages" in row:
        messages = [dict(m) for m in row["messages"]]
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        ids, labels = [], []

        def render(msgs, gen: bool) -> list[int]:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = render(messages[:i], True)
            upto = render(messages[: i + 1], False)
            new_context = before[len(ids):]
            ids += new_context
            labels += [IGNORE] * len(new_context)
            answer = upto[len(before):]
            ids += answer
            labels += answer
    else:
        prompt = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids, labels = prompt + answer, [IGNORE] * len(prompt) + answer
    return ids[:max_len], labels[:max_len]
