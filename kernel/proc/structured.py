"""Structured output: JSON that matches a schema, constrained where the driver can, validated always.

Boundaries: uses only the kernel's `submit` (its `KernelPort`, kernel/port.py). `submit_json` asks for grammar-constrained output
(`json_schema=`) and falls back to plain decoding where the driver cannot constrain it, or not to this
schema (refused at submit: unsupported, or past the grammar's bounds); the caller then validates, and
retries or reports. `parse_json` validates a reply against the schema.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import jsonschema

from ..errors import InvalidRequestError, LlmosError

if TYPE_CHECKING:
    from ..port import KernelPort
    from ..sched.handle import RequestHandle


class StructuredOutputError(LlmosError):
    """The model's reply is not JSON matching the schema (possible only where decoding is not
    constrained, or when max_tokens cut the reply short)."""

    code = "invalid_model_output"


def submit_json(kernel: "KernelPort", schema: dict[str, Any], **kwargs: Any) -> "RequestHandle":
    try:
        return kernel.submit(json_schema=schema, **kwargs)
    except InvalidRequestError as exc:
        if exc.param != "json_schema":
            raise
        return kernel.submit(**kwargs)


def parse_json(text: str, schema: dict[str, Any]) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StructuredOutputError(f"the model's reply is not JSON ({exc.msg}): {text[:200]!r}") from None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        raise StructuredOutputError(f"the model's reply does not match the schema: {exc.message}") from None
    return value
