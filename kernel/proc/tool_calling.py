"""Tool calls from small local models, in OpenAI's `tool_calls` format.

Boundaries: pure functions over dicts. The model is asked for one JSON object: `{"name": <tool>,
"arguments": {...}}` for a call, or `{"content": "..."}` for an answer. `call_schema` turns the tools
into the JSON schema a driver constrains decoding to (llama.cpp grammar, llguidance on torch); `parse_reply` turns the
reply back into content or `tool_calls` and `check_call` validates the arguments against the tool's
schema (what catches a bad call where decoding could not be constrained). `for_model` renders a
conversation holding tool calls and results as plain chat messages any chat template can carry.
Used by the HTTP server (shell/server/tool_calls.py).

The agent loop (kernel/proc/agents.py) asks in two constrained calls instead, which small models get right
far more often: first which tool (or "answer": `choice_schema`, `parse_choice`), then that tool's
arguments under its own parameter schema (`arguments_prompt`, `parse_arguments`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]

    def as_tool(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


class InvalidToolCall(ValueError):
    """The model's reply is not a valid call (not JSON, unknown tool, arguments off-schema)."""


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InvalidToolCall(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(obj, dict):
        raise InvalidToolCall(f"{what} must be a JSON object")
    return obj


def call_schema(functions: list[Function], *, may_answer: bool) -> dict[str, Any]:
    calls = [{"type": "object", "properties": {"name": {"const": f.name}, "arguments": f.parameters},
              "required": ["name", "arguments"]} for f in functions]
    options = calls + ([{"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}]
                       if may_answer else [])
    return options[0] if len(options) == 1 else {"anyOf": options}


def tools_prompt(functions: list[Function], *, may_answer: bool) -> str:
    listing = "\n".join(f"- {f.name}: {f.description} Parameters: {json.dumps(f.parameters)}" for f in functions)
    return ("You can call these tools:\n" + listing + "\nTo call one, reply with JSON "
            '{"name": "<tool>", "arguments": {...}}'
            + ('; to answer directly, reply with {"content": "<answer>"}.' if may_answer else "."))


def new_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def parse_reply(text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) from a JSON reply; raises InvalidToolCall when it is not one."""
    obj = _json_object(text, "the reply")
    if "name" in obj:
        args = obj.get("arguments", {})
        if not isinstance(obj["name"], str) or not isinstance(args, dict):
            raise InvalidToolCall('a call must be {"name": "<tool>", "arguments": {...}}')
        return None, [new_call(obj["name"], args)]
    if isinstance(obj.get("content"), str):
        return obj["content"], None
    raise InvalidToolCall('the reply must be {"name": ..., "arguments": ...} or {"content": "..."}')


def check_call(call: dict[str, Any], functions: list[Function]) -> dict[str, Any]:
    """The call's arguments, validated against its tool's parameter schema."""
    name = call["function"]["name"]
    fn = next((f for f in functions if f.name == name), None)
    if fn is None:
        raise InvalidToolCall(f"there is no tool {name!r}; the tools are {[f.name for f in functions]}")
    try:
        args = json.loads(call["function"].get("arguments") or "{}")
    except ValueError:
        raise InvalidToolCall(f"the arguments of {name} are not valid JSON") from None
    try:
        jsonschema.validate(args, fn.parameters)
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "arguments"
        raise InvalidToolCall(f"invalid arguments for {name} at {where}: {exc.message}") from None
    return args


def for_model(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Role/content messages for a chat template: calls as their JSON, results as text."""
    out = []
    for m in messages:
        role = "system" if m.get("role") == "developer" else m.get("role")
        text = m.get("content") or ""
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            text = "\n".join(json.dumps({"name": c["function"]["name"],
                                         "arguments": json.loads(c["function"].get("arguments") or "{}")})
                             for c in calls)
        if role == "tool":
            text = f"Tool result: {text}"
        out.append({"role": role, "content": text})
    return out


ANSWER = "answer"


def choice_schema(functions: list[Function], *, may_answer: bool) -> dict[str, Any]:
    names = [f.name for f in functions] + ([ANSWER] if may_answer else [])
    return {"type": "object", "properties": {"name": {"enum": names}}, "required": ["name"]}


def choice_prompt(functions: list[Function], *, may_answer: bool) -> str:
    listing = "\n".join(f"- {f.name}: {(f.description or '').strip().splitlines()[0] if f.description else ''}"
                         for f in functions)
    answer = (f' If the tool results above already answer the goal, reply {{"name": "{ANSWER}"}}.'
              if may_answer else "")
    return (f"Pick the tool that helps with the user's goal.\nTools:\n{listing}\n"
            f'Reply as JSON: {{"name": "<tool>"}}.{answer}')


def parse_choice(text: str, functions: list[Function], *, may_answer: bool) -> str:
    """The chosen tool's name (or ANSWER); raises InvalidToolCall."""
    name = _json_object(text, "the reply").get("name")
    allowed = [f.name for f in functions] + ([ANSWER] if may_answer else [])
    if name not in allowed:
        raise InvalidToolCall(f"there is no tool {name!r}; choose one of {allowed}")
    return name


def arguments_prompt(fn: Function) -> str:
    summary = (fn.description or "").strip().splitlines()[0] if fn.description else ""
    keys = ", ".join(fn.parameters.get("properties", {})) or "no keys"
    return (f"Write the arguments for the tool {fn.name} ({summary}) that achieve the user's goal, "
            f"as JSON with the keys {keys}.")


def parse_arguments(text: str, fn: Function) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tool call in OpenAI format, validated arguments) from the arguments reply; raises InvalidToolCall."""
    args = _json_object(text, "the arguments")
    call = new_call(fn.name, args)
    return call, check_call(call, [fn])


def condensed(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation for a small model: each tool call and its result become one user note
    ("Tool name(args) returned: result"), so the model reads results instead of imitating call JSON."""
    results = {m.get("tool_call_id"): m.get("content") or "" for m in messages if m.get("role") == "tool"}
    out = []
    for m in messages:
        if m.get("role") in ("system", "tool"):
            continue
        if m.get("tool_calls"):
            for c in m["tool_calls"]:
                out.append({"role": "user", "content": f"Tool {c['function']['name']}({c['function']['arguments']}) "
                                                       f"returned: {results.get(c['id'], '(no result)')}"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


#: longest string / array a constrained reply may hold unless the schema says less, so that every
#: constrained reply ends well within the call's max_tokens (a cut-off reply is not JSON)
MAX_STRING, MAX_ITEMS = 80, 8


def bounded(schema: Any) -> Any:
    """A copy of `schema` for constrained decoding, with strings and arrays capped in length."""
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v) for k, v in schema.items()}
    if out.get("type") == "string" and "enum" not in out and "const" not in out:
        out["maxLength"] = min(out.get("maxLength", MAX_STRING), MAX_STRING)
    if out.get("type") == "array":
        out["maxItems"] = min(out.get("maxItems", MAX_ITEMS), MAX_ITEMS)
    return out
