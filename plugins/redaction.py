"""Built-in, opt-in redaction (the seed's data masking): emails, phone numbers, card numbers and
configured patterns are masked before a prompt reaches a driver and in stored sessions and the
audit log.

    [redaction]
    enabled = true
    patterns = ["ACME-\\d{6}"]     # extra regular expressions, masked as [REDACTED]

Two hooks: `prepare_prompt` as a wrapper (it lets every other plugin rewrite the prompt first, then
masks the result, so nothing a plugin adds slips through; RAG passages are in the prompt by then)
and `register_redactors` (the kernel runs the maskers over the strings of what it stores). The
table is declared with `register_config`, so a misspelled key stops the boot; its values arrive with
`kernel_booted`. A message content that is JSON (a tool result) is masked inside, never as text.
"""

from __future__ import annotations

import re
from typing import Any

from llmos.kernel.errors import ConfigError
from llmos.kernel.lib.masking import redact_messages, redact_text

from .hookspecs import hookimpl

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
ESCAPE = re.compile(r"(\\[nrt])")
PHONE = re.compile(r"(?<![\w])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if _luhn(digits) else match.group()


def _phone(match: re.Match) -> str:
    return "[PHONE]" if 7 <= len(re.sub(r"\D", "", match.group())) <= 15 else match.group()  # E.164: <= 15


class Redaction:
    def __init__(self) -> None:
        self.enabled = False
        self.patterns: list[re.Pattern] = []

    def configure(self, section: Any) -> None:
        section = dict(section or {})
        enabled = section.get("enabled", False)
        raw = section.get("patterns", [])
        if not isinstance(enabled, bool) or not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise ConfigError("[redaction] needs enabled = true|false and patterns = [\"regex\", ...]")
        try:
            self.patterns = [re.compile(p) for p in raw]
        except re.error as exc:
            raise ConfigError(f"[redaction] patterns: {exc}") from None
        self.enabled = enabled

    def mask(self, text: str) -> str:
        if not self.enabled or not text:
            return text
        if "\\" in text:  # JSON-escaped text inside a prompt (a tool call note): what follows an escape
            return "".join(self._mask(p) for p in ESCAPE.split(text))  # such as \n555-0134 is masked too
        return self._mask(text)

    def _mask(self, text: str) -> str:
        text = EMAIL.sub("[EMAIL]", text)
        text = CARD.sub(_card, text)
        text = PHONE.sub(_phone, text)
        for pattern in self.patterns:
            text = pattern.sub("[REDACTED]", text)
        return text

    @hookimpl
    def kernel_booted(self, kernel: Any) -> None:
        self.configure(kernel.config.sections.get("redaction"))

    @hookimpl(wrapper=True)
    def prepare_prompt(self, prompt: Any):
        result = yield  # every other plugin rewrites first; what they produce is masked too
        if self.enabled:
            if prompt.text is not None:
                prompt.text = redact_text(prompt.text, self.mask)
            if prompt.messages is not None:
                prompt.messages = redact_messages(prompt.messages, self.mask)
        return result

    @hookimpl
    def register_config(self, register) -> None:
        register("redaction", ["enabled", "patterns"])

    @hookimpl
    def register_redactors(self, register) -> None:
        register("redaction", self.mask)
