"""Tools and tasks: plain Python functions that plugins register, described by a JSON schema.

The schema comes from the function's signature (type hints, defaults, docstring) through pydantic:
required vs default parameters, int/float/str/bool/list/dict/Literal/Optional. Arguments are
validated against it before the call; errors name the parameter. Calls run on a worker thread with a
timeout: a tool that raises or hangs comes back as a failed `ToolResult`, never as an exception in
the caller. Capability checks and the audit log live in kernel/capabilities.py.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import pydantic

from .errors import InvalidRequestError, LlmosError

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class UnknownToolError(LlmosError, LookupError):
    code = "tool_not_found"


class ToolArgumentError(InvalidRequestError):
    """Arguments that do not match a tool's (or task's) schema; `param` names the first culprit."""

    code = "invalid_tool_arguments"


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    value: Any = None
    error: str | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "value": self.value, "error": self.error, "duration_s": self.duration_s}


def _describe(fn: Callable, skip_first: bool) -> tuple[str, type[pydantic.BaseModel]]:
    """(description, argument model) from a function's docstring and signature."""
    hints = typing.get_type_hints(fn)
    fields: dict[str, Any] = {}
    params = list(inspect.signature(fn).parameters.values())
    for p in params[1:] if skip_first else params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints:
            raise TypeError(f"{fn.__qualname__}: parameter {p.name!r} needs a type hint")
        fields[p.name] = (hints[p.name], ... if p.default is p.empty else p.default)
    model = pydantic.create_model(f"{fn.__name__}_args", __config__=pydantic.ConfigDict(extra="forbid"), **fields)
    doc = inspect.getdoc(fn) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " "), model


def _schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.setdefault("required", [])
    return schema


def _validate(model: type[pydantic.BaseModel], args: Any, what: str) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise ToolArgumentError(f"{what} arguments must be a JSON object, got {type(args).__name__}", param=None)
    try:
        return dict(model.model_validate(args))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(x) for x in first["loc"]) or None
        kind = {"missing": "is missing", "extra_forbidden": "is not a parameter"}.get(first["type"], first["msg"])
        raise ToolArgumentError(f"{what}: {param} {kind}", param=param) from None


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name or set(name) - NAME_CHARS:
        raise ValueError(f"{kind} name {name!r} may use letters, digits, '_', '.', '-' only")
    return name


def _validate_schema(schema: dict[str, Any], args: Any, what: str) -> dict[str, Any]:
    import jsonschema

    if not isinstance(args, dict):
        raise ToolArgumentError(f"{what} arguments must be a JSON object, got {type(args).__name__}", param=None)
    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError as exc:
        param = ".".join(str(p) for p in exc.absolute_path) or None
        raise ToolArgumentError(f"{what}: {exc.message}", param=param) from None
    return args


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[..., Any]
    description: str
    schema: dict[str, Any]
    capabilities: frozenset[str]
    plugin: str
    _model: type[pydantic.BaseModel] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    takes_kernel: bool = False  # fn(kernel, **args): a first parameter named `kernel` gets the kernel

    @classmethod
    def from_function(cls, fn: Callable, *, name: str | None, capabilities, plugin: str) -> "Tool":
        name = _check_name("tool", name or fn.__name__)
        takes_kernel = list(inspect.signature(fn).parameters)[:1] == ["kernel"]  # passed by the toolbox
        description, model = _describe(fn, skip_first=takes_kernel)
        caps = frozenset([capabilities] if isinstance(capabilities, str) else capabilities or ())
        return cls(name, fn, description, _schema(model), caps, plugin, model, takes_kernel)

    def validate(self, args: Any) -> dict[str, Any]:
        if self._model is None:  # a tool that brings its own JSON schema (MCP)
            return _validate_schema(self.schema, args, f"tool {self.name}")
        return _validate(self._model, args, f"tool {self.name}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "schema": self.schema,
                "capabilities": sorted(self.capabilities), "plugin": self.plugin}


@dataclass(frozen=True)
class Task:
    name: str
    fn: Callable[..., Any]
    description: str
    schema: dict[str, Any]
    plugin: str
    _model: type[pydantic.BaseModel] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    @classmethod
    def from_function(cls, name: str, fn: Callable, *, description: str | None, plugin: str) -> "Task":
        _check_name("task", name)
        doc, model = _describe(fn, skip_first=True)  # fn(kernel, **params)
        return cls(name, fn, description or doc, _schema(model), plugin, model)

    def validate(self, params: Any) -> dict[str, Any]:
        return _validate(self._model, params, f"task {self.name}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "schema": self.schema, "plugin": self.plugin}


def parse_cli_params(schema: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings to parameters: arrays split on commas, the rest left to validation."""
    out: dict[str, Any] = {}
    props = schema.get("properties", {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ToolArgumentError(f"--param expects key=value, got {pair!r}", param=pair)
        kind = props.get(key, {}).get("type")
        if kind is None:  # Optional[...] shows up as anyOf
            kinds = [a.get("type") for a in props.get(key, {}).get("anyOf", [])]
            kind = "array" if "array" in kinds else None
        out[key] = [v.strip() for v in value.split(",") if v.strip()] if kind == "array" else value
    return out


def run_with_timeout(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any, str | None]:
    """(ok, value, error): exceptions and timeouts become errors, never propagate. Each call gets its
    own daemon thread, so a tool that hangs past its timeout never delays other calls."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def target() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - delivered below
            future.set_exception(exc)

    threading.Thread(target=target, name="llmos-tool", daemon=True).start()
    try:
        return True, future.result(timeout), None
    except concurrent.futures.TimeoutError:
        return False, None, f"timed out after {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - a tool's failure is its caller's data
        return False, None, f"{type(exc).__name__}: {exc}"
