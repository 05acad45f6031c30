"""OpenAI tools and response_format on top of grammar-constrained decoding.

A request with `tools` is turned into a JSON-schema constraint: the model must answer with
`{"name": <tool>, "arguments": {...}}` matching one tool's parameters (`tool_choice` "required" or a
named function), or may also answer `{"content": "..."}` ("auto"); the schema, the tools' system text
and the parsing are kernel/proc/tool_calling.py's. This module maps the OpenAI request fields onto them.
"""

from __future__ import annotations

from typing import Any

from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.proc.tool_calling import (EMPTY_PARAMETERS, Function, InvalidToolCall, call_schema, for_model,
                                       parse_reply, tools_prompt)


def response_schema(response_format: Any) -> dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format.json_schema.schema must be a JSON schema object",
                                      param="response_format")
        return schema
    raise InvalidRequestError("response_format.type must be text, json_object or json_schema",
                              param="response_format")


def _functions(tools: list[dict[str, Any]]) -> list[Function]:
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                or not fn["name"]:
            raise InvalidRequestError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                                      param="tools")
        description, parameters = fn.get("description") or "", fn.get("parameters") or dict(EMPTY_PARAMETERS)
        if not isinstance(description, str) or not isinstance(parameters, dict):
            raise InvalidRequestError(f"tools[{i}].function: description must be a string and parameters a JSON "
                                      f"schema object", param="tools")
        out.append(Function(fn["name"], description, parameters))
    return out


def tool_constraint(tools: list[dict[str, Any]] | None, tool_choice: Any) -> tuple[dict | None, str | None]:
    """(JSON schema for the answer, system text describing the tools); (None, None) without tools."""
    if not tools or tool_choice == "none":
        return None, None
    functions = _functions(tools)
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        wanted = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type", "function") != "function" or not isinstance(wanted, str):
            raise InvalidRequestError('tool_choice must be none, auto, required or {"type": "function", '
                                      '"function": {"name": ...}}', param="tool_choice")
        functions = [f for f in functions if f.name == wanted]
        if not functions:
            raise InvalidRequestError(f"tool_choice names {wanted!r}, which is not in tools", param="tool_choice")
    elif tool_choice not in (None, "auto", "required"):
        raise InvalidRequestError("tool_choice must be none, auto, required or a function", param="tool_choice")
    may_answer = tool_choice in (None, "auto")
    return call_schema(functions, may_answer=may_answer), tools_prompt(functions, may_answer=may_answer)


def render_messages(messages: list[Any]) -> list[dict[str, str]]:
    """Chat messages (pydantic models, tool calls already validated) as role/content text, tool calls and
    results included."""
    return for_model([{"role": m.role, "content": m.text(),
                       "tool_calls": [c.model_dump() for c in m.tool_calls] if m.tool_calls else None}
                      for m in messages])


def parse_answer(text: str, with_tools: bool) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) from the constrained JSON answer."""
    if not with_tools:
        return text, None
    try:
        return parse_reply(text)
    except InvalidToolCall:
        return text, None  # cut short (max_tokens): give the raw text back
