"""Tools and tasks: plain Python functions that plugins register, described by a JSON schema.

The schema comes from the function's signature (type hints, defaults, docstring) through pydantic:
required vs default parameters, int/float/str/bool/list/dict/Literal/Optional. Arguments are
validated against it before the call; errors name the parameter. Calls run on a worker thread with a
timeout (`Workers`): whatever a tool raises, a timeout, or a result that is not JSON (a huge int, a
cycle, NaN, over `MAX_RESULT_CHARS`) comes back as a typed `ToolError` in a failed `ToolResult`, never
as an exception in the caller. Capability checks and the audit log live in kernel/tools/capabilities.py.

Timed-out workers: Python cannot kill a thread, so a tool call that times out keeps running on its
daemon thread (it never blocks the caller or interpreter exit). At most `MAX_ABANDONED` such calls
per tool may be left running; past that, new calls to that tool are refused with `ToolBusyError`
until one of them ends. A tool that can hang for long must bound itself (the calculator refuses
huge numbers before computing them) or run its work in a subprocess.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import pydantic

from ..errors import InvalidRequestError, LlmosError

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class UnknownToolError(LlmosError, LookupError):
    code = "tool_not_found"


class ToolArgumentError(InvalidRequestError):
    """Arguments that do not match a tool's (or task's) schema; `param` names the first culprit."""

    code = "invalid_tool_arguments"


class ToolError(LlmosError):
    """A tool call that failed: the tool raised, or returned something that is not JSON."""

    code = "tool_failed"


class ToolTimeoutError(ToolError, TimeoutError):
    code = "tool_timeout"


class ToolBusyError(ToolError):
    """Too many earlier calls of this tool timed out and are still running: refused until one ends."""

    code = "tool_busy"


#: characters a tool's result may take as JSON
MAX_RESULT_CHARS = 1_000_000
#: timed-out calls per tool whose threads may still be running before new calls are refused
MAX_ABANDONED = 4


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    value: Any = None
    error: str | None = None
    duration_s: float = 0.0
    code: str | None = None  # the ToolError code when not ok: tool_failed | tool_timeout | tool_busy

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "value": self.value, "error": self.error, "code": self.code,
                "duration_s": self.duration_s}


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


def json_result(value: Any) -> Any:
    """`value` if it serializes as JSON within MAX_RESULT_CHARS (objects by their str()); else ToolError."""
    try:
        size = len(json.dumps(value, default=str, allow_nan=False))
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        raise ToolError(f"the tool returned a value that is not JSON ({type(value).__name__}: {exc})") from None
    if size > MAX_RESULT_CHARS:
        raise ToolError(f"the tool returned {size:,} characters of JSON; the limit is {MAX_RESULT_CHARS:,}")
    return value


class Workers:
    """Runs tool calls on daemon threads with a timeout; counts timed-out calls still running per
    tool and refuses new calls to a tool that has `max_abandoned` of them (see the module's notes)."""

    def __init__(self, max_abandoned: int = MAX_ABANDONED) -> None:
        self.max_abandoned = max_abandoned
        self._abandoned: dict[str, int] = {}
        self._lock = threading.Lock()

    def abandoned(self, name: str) -> int:
        with self._lock:
            return self._abandoned.get(name, 0)

    def run(self, name: str, fn: Callable[[], Any], timeout: float) -> Any:
        """fn()'s JSON-able value; raises ToolError (ToolTimeoutError, ToolBusyError) for anything else."""
        with self._lock:
            if self._abandoned.get(name, 0) >= self.max_abandoned:
                raise ToolBusyError(f"tool {name!r} has {self._abandoned[name]} earlier calls still running after "
                                    f"their timeout: refused until one ends")
        future: concurrent.futures.Future = concurrent.futures.Future()
        left_behind = threading.Event()

        def target() -> None:
            try:
                future.set_result(json_result(fn()))
            except ToolError as exc:
                future.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001 - whatever a tool raises is its caller's data
                error = ToolError(f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
                future.set_exception(error)
            finally:
                with self._lock:
                    if left_behind.is_set():
                        self._abandoned[name] -= 1

        threading.Thread(target=target, name=f"llmos-tool-{name}", daemon=True).start()
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                if not future.done():  # still running: its thread is left behind, and counted
                    left_behind.set()
                    self._abandoned[name] = self._abandoned.get(name, 0) + 1
            if future.done():
                return future.result()
            raise ToolTimeoutError(f"timed out after {timeout:g}s") from None
