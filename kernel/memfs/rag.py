"""Retrieval-augmented prompts: passages from a memfs subtree, within the context budget, cited by path.

The last user message is the query. The best passages (one per file, best first) are put into a
system message while they fit the token budget left by the prompt and max_tokens; the model is asked
to cite the paths in brackets, and the request records which paths it was given (`sources`).
The kernel adds the passages before the `prepare_prompt` hook, so plugins see them like the rest of
the prompt: redaction masks them when it is on.
"""

from __future__ import annotations

from typing import Any, Callable

INSTRUCTION = ("Answer the user's question using the passages below. After each fact, cite the path of the "
               "passage it comes from in brackets, like [{example}]. If the passages do not answer the "
               "question, say so.")


#: passages scoring below this cosine similarity are not worth the context they take
MIN_SCORE = 0.15


def with_passages(mem, messages: list[dict[str, Any]], within: str, count_tokens: Callable[[str], int],
                  budget: int, k: int = 6) -> tuple[list[dict[str, Any]], list[str]]:
    query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    hits = mem.find(query, within, k) if query.strip() else []
    used, parts = [], []
    spent = count_tokens(INSTRUCTION) + 16
    for hit in hits:
        if hit["score"] < MIN_SCORE:
            continue
        part = f"[{hit['path']}]\n{hit['text'].strip()}"
        cost = count_tokens(part) + 4
        if spent + cost > budget:
            continue
        parts.append(part)
        used.append(hit["path"])
        spent += cost
    if not parts:
        return messages, []
    context = INSTRUCTION.format(example=used[0]) + "\n\n" + "\n\n".join(parts)
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    merged = {"role": "system", "content": (system[0]["content"] + "\n\n" if system else "") + context}
    return [merged] + rest, used


def add_passages(mem, loaded, prompt: str | None, chat: list[dict[str, Any]] | None, max_tokens: int,
                 system_prompt: str, within: str, k: int = 6) -> tuple[list[dict[str, Any]], list[str]]:
    """(chat, sources) for a request with `rag=within`: a prompt becomes a chat, the default system
    prompt is added when there is none, and at most `k` passages fill what the model's context leaves."""
    drv = loaded.driver
    chat = [{"role": "user", "content": prompt}] if chat is None else chat
    if system_prompt and not any(m["role"] == "system" for m in chat):
        chat.insert(0, {"role": "system", "content": system_prompt})
    budget = loaded.info.context_length - max_tokens - len(drv.tokenize_chat(chat)) - 32
    return with_passages(mem, chat, within, lambda t: len(drv.tokenize(t, add_special=False)), budget, k)
