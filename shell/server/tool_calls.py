"""OpenAI tools and response_format on top of grammar-constrained decoding.

A request with `tools` is turned into a JSON-schema constraint: the model must answer with
`{"name": <tool>, "arguments": {...}}` matching one tool's parameters (`tool_choice` "required" or a
named function), or may also answer `{"content": "..."}` ("auto"). The tools are described in a system
message. The JSON answer is parsed back into OpenAI `tool_calls` (or plain content). Earlier tool calls
and tool results in the conversation are rendered as text the chat template can carry.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from llmos.kernel.errors import InvalidRequestError


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


def _functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                                      param="tools")
        out.append({"name": fn["name"], "description": fn.get("description", ""),
                    "parameters": fn.get("parameters") or {"type": "object", "properties": {}}})
    return out


def tool_constraint(tools: list[dict[str, Any]] | None, tool_choice: Any) -> tuple[dict | None, str | None]:
    """(JSON schema for the answer, system text describing the tools); (None, None) without tools."""
    if not tools or tool_choice == "none":
        return None, None
    functions = _functions(tools)
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        functions = [f for f in functions if f["name"] == wanted]
        if not functions:
            raise InvalidRequestError(f"tool_choice names {wanted!r}, which is not in tools", param="tool_choice")
    elif tool_choice not in (None, "auto", "required"):
        raise InvalidRequestError("tool_choice must be none, auto, required or a function", param="tool_choice")
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
              "required": ["name", "arguments"]} for f in functions]
    may_answer = tool_choice in (None, "auto")
    options = calls + ([{"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}]
                       if may_answer else [])
    listing = "\n".join(f"- {f['name']}: {f['description']} Parameters: {json.dumps(f['parameters'])}"
                        for f in functions)
    text = ("You can call these tools:\n" + listing + "\nTo call one, reply with JSON "
            '{"name": "<tool>", "arguments": {...}}' + (
                '; to answer directly, reply with {"content": "<answer>"}.' if may_answer else "."))
    return (options[0] if len(options) == 1 else {"anyOf": options}), text


def render_messages(messages: list[Any]) -> list[dict[str, str]]:
    """Chat messages (pydantic models) as role/content text, tool calls and results included."""
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        calls = getattr(m, "tool_calls", None) or (m.model_extra or {}).get("tool_calls")
        if role == "assistant" and calls:
            text = "\n".join(json.dumps({"name": c["function"]["name"],
                                         "arguments": json.loads(c["function"].get("arguments") or "{}")})
                             for c in calls)
        if role == "tool":
            text = f"Tool result: {text}"
        out.append({"role": role, "content": text})
    return out


def parse_answer(text: str, with_tools: bool) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) from the constrained JSON answer."""
    if not with_tools:
        return text, None
    try:
        obj = json.loads(text)
    except ValueError:
        return text, None  # cut short (max_tokens): give the raw text back
    if isinstance(obj, dict) and "name" in obj:
        return None, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                       "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}}]
    return (obj.get("content") if isinstance(obj, dict) else text), None
