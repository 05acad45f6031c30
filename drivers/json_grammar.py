"""JSON schema -> GBNF grammar for constrained decoding, with bounds a client cannot get past.

Boundaries: pure Python over the schema dict plus llama-cpp-python's pure-Python converter
(`llama_cpp.llama_grammar`, imported lazily); no model, no ctypes. drivers/llamacpp_lib.py adds the
last check, llama.cpp's own grammar parser. The torch driver (drivers/torch_constrain.py) applies the
same bounds (`check_schema`) and reads objects the same way (`closed_objects`). Every refusal is an InvalidRequestError(param=
"json_schema") naming the problem, raised at submit (through `Driver.check_json_schema`).

Why bounds: the converter writes a repetition (`maxLength`, `maxItems`, `{m,n}` in a pattern) as
nested groups, one level per repeat; llama.cpp's parser refuses groups nested more than ~1,000 deep
and overflows its stack (kills the process) at some tens of thousands.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from typing import Any

from llmos.kernel.errors import InvalidRequestError

#: the schema's JSON text
MAX_SCHEMA_CHARS = 65_536
#: nested JSON objects/arrays in the schema
MAX_SCHEMA_DEPTH = 64
#: minLength/maxLength/minItems/maxItems (each repeat is one nesting level of the grammar)
MAX_REPEAT = 1000
#: nesting of groups in the generated grammar (llama.cpp's parser refuses more)
MAX_GRAMMAR_DEPTH = 1000
#: the generated grammar's text
MAX_GRAMMAR_CHARS = 262_144

TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
_REPEAT_KEYS = ("minLength", "maxLength", "minItems", "maxItems")
_SCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "if", "then", "else")
_SCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SCHEMA_MAP_KEYS = ("properties", "definitions", "$defs", "patternProperties")
#: string literals and character classes of a GBNF grammar (their parentheses do not nest)
_LITERALS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')


def refuse(message: str) -> InvalidRequestError:
    """The error refusing a schema, naming `message` (what to fix)."""
    return InvalidRequestError(f"json_schema: {message}", param="json_schema")


def _depth(value: Any) -> int:
    """Nesting of JSON containers, without recursion (a hostile schema may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_SCHEMA_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _check_node(schema: Any, path: str) -> None:
    """Types and repetition bounds of one subschema and, recursively, of its subschemas."""
    if not isinstance(schema, dict):
        raise refuse(f"{path or '/'} must be a schema object, got {json.dumps(schema)[:60]}")
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [] if kinds is None else [kinds]:
        if kind not in TYPES:
            raise refuse(f'"type": {json.dumps(kind)[:60]} at {path or "/"} is not a JSON type '
                          f"(use {', '.join(TYPES)})")
    for key in _REPEAT_KEYS:
        if key in schema:
            n = schema[key]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_REPEAT:
                raise refuse(f"{key} at {path or '/'} must be an integer from 0 to {MAX_REPEAT} for constrained "
                              f"decoding, got {json.dumps(n)[:60]}")
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if schema.get(low, 0) > schema.get(high, MAX_REPEAT):
            raise refuse(f"{low} {schema[low]} is over {high} {schema[high]} at {path or '/'}")
    for key in _SCHEMA_KEYS:
        if isinstance(schema.get(key), dict):
            _check_node(schema[key], f"{path}/{key}")
    for key in _SCHEMA_LIST_KEYS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                _check_node(sub, f"{path}/{key}/{i}")
    for key in _SCHEMA_MAP_KEYS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                _check_node(sub, f"{path}/{key}/{name}")


def check_schema(schema_json: str) -> Any:
    """The parsed schema, or InvalidRequestError naming the first bound it breaks."""
    if len(schema_json) > MAX_SCHEMA_CHARS:
        raise refuse(f"the schema is {len(schema_json)} characters of JSON (limit {MAX_SCHEMA_CHARS})")
    try:
        schema = json.loads(schema_json)
    except RecursionError:  # nested past the parser's own depth: far past the bound below
        raise refuse(f"the schema nests objects and arrays more than {MAX_SCHEMA_DEPTH} levels deep") from None
    depth = _depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise refuse(f"the schema nests objects and arrays more than {MAX_SCHEMA_DEPTH} levels deep")
    _check_node(schema, "")
    return schema


def closed_objects(schema: Any) -> Any:
    """A copy of a checked schema in which an object that lists `properties` admits no others unless
    it says so (`additionalProperties` true or a schema, or `patternProperties`): how llama-cpp-python's
    converter reads a schema, so the torch driver's llguidance (which follows JSON Schema: open by
    default) constrains output the same way; a small model then cannot wander into invented keys."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_KEYS + _SCHEMA_LIST_KEYS:
        if isinstance(out.get(key), (dict, list)):
            out[key] = closed_objects(out[key])
    for key in _SCHEMA_MAP_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def grammar_depth(grammar: str) -> int:
    """How deep groups `( ... )` nest in a GBNF grammar."""
    bare = _LITERALS.sub("", grammar)
    return max(itertools.accumulate(1 if c == "(" else -1 for c in bare if c in "()"), default=0)


@functools.lru_cache(maxsize=64)
def grammar_for(schema_json: str) -> str:
    """GBNF for JSON values matching the schema (`schema_json`: its JSON text, sorted keys)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    check_schema(schema_json)
    try:
        grammar = json_schema_to_gbnf(schema_json)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare errors for unsupported schemas
        raise refuse(f"unsupported by constrained decoding: {type(exc).__name__}: {str(exc)[:200]}") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise refuse(f"its grammar would be {len(grammar)} characters (limit {MAX_GRAMMAR_CHARS}): use fewer "
                      f"properties, enum values or alternatives")
    depth = grammar_depth(grammar)
    if depth > MAX_GRAMMAR_DEPTH:
        raise refuse(f"its grammar would nest {depth} levels deep (limit {MAX_GRAMMAR_DEPTH}): lower the "
                      f"repetition counts ({{m,n}}) in its patterns")
    # llama-cpp-python's string rule lets raw control characters (newlines) into strings, which JSON
    # forbids; llama.cpp's own converter excludes them, and so do we
    return grammar.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')
