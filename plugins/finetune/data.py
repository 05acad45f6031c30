"""Fine-tuning data: JSONL of chat examples or prompt/completion pairs, encoded with loss masks.

Each line is `{"messages": [{"role": ..., "content": ...}, ...]}` (loss on the assistant turns) or
`{"prompt": "...", "completion": "..."}` (loss on the completion). Bad rows are reported with their
line number and skipped; a missing, unreadable or empty file (no usable row) stops before training.
Chat examples without a system message get the kernel's default system prompt, as requests do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.sched.request import validate_messages

from ..jsonl import DataFileError, Dataset, read_rows

IGNORE = -100  # label of tokens that carry no loss


class FinetuneDataError(DataFileError):
    """The training data cannot be used; the message names the file (and line)."""

    code = "invalid_training_data"


def load_jsonl(path: str | Path, *, param: str = "data") -> Dataset:
    return read_rows(path, _check_row, param=param, what="training example", error=FinetuneDataError)


def _check_row(row: Any) -> str | None:
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
