"""Built-in tools and tasks, shipped as a plugin through the public hooks."""

from __future__ import annotations

import ast
import datetime as _dt
import math
import operator
from typing import Any, Callable, Literal, Optional

from .hookspecs import hookimpl

_MATH = {name: getattr(math, name) for name in ("sqrt", "sin", "cos", "tan", "log", "log10", "exp", "floor",
                                                 "ceil", "fabs")}


def _round(number: Any, ndigits: Any = None) -> Any:
    if ndigits is not None and abs(ndigits) > 1_000:  # round(5, -10**9) computes 10**(10**9) first
        raise CalculatorError(f"round(): ndigits {ndigits} is out of range (-1000..1000)")
    return round(number, ndigits)


_MATH.update(abs=abs, round=_round, min=min, max=max)

#: integers the calculator may build, in bits (~3,000 decimal digits): far under Python's 4,300-digit
#: str() limit, so every result serializes, and each operation on such numbers takes microseconds
MAX_INT_BITS = 10_000
#: characters in an expression
MAX_EXPRESSION = 1_000
#: the syntax an arithmetic expression may use (no strings, lists, attributes, subscripts, keywords)
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.Name, ast.Load,
          ast.Constant, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


class CalculatorError(ValueError):
    """An expression the calculator refuses: not arithmetic, or a result too large to compute quickly."""


def _number(value: Any) -> Any:
    """Check that one intermediate value is a number of bounded size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError(f"only numbers are allowed, got {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"an intermediate result has {value.bit_length():,} bits; the limit is "
                              f"{MAX_INT_BITS:,} bits (about 3,000 digits)")
    return value


def _power(a: Any, b: Any) -> Any:
    """a ** b, refused before computing when the result would exceed MAX_INT_BITS."""
    _number(a), _number(b)
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        bits = b * math.log2(abs(a))
        if bits > MAX_INT_BITS:
            base = "a large number" if a.bit_length() > 64 else f"({a})" if a < 0 else a
            raise CalculatorError(f"{base} ** {b} would have about "
                                  f"{bits:,.0f} bits; the limit is {MAX_INT_BITS:,} bits (about 3,000 digits)")
    return _number(a ** b)


def _checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        return _number(fn(*(_number(a) for a in args)))
    return run


_OPERATORS = {
    **{kind: _checked(fn) for kind, fn in {
        ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos,
    }.items()},
    ast.Pow: _power,
    **{kind: lambda a, b, fn=fn: fn(_number(a), _number(b)) for kind, fn in {
        ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge}.items()},
    ast.Not: operator.not_,
}


def _quoted(expression: str) -> str:
    return repr(expression if len(expression) <= 60 else expression[:57] + "...")


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression (+ - * / // % **, parentheses, sqrt, log, sin, pi, e...).

    The expression is parsed, never passed to Python's eval: names and calls outside the math
    functions are refused, and so is anything that would build a number over 10,000 bits (checked
    before each power is computed), so every call returns quickly."""
    from simpleeval import InvalidExpression, SimpleEval

    if len(expression) > MAX_EXPRESSION:
        raise CalculatorError(f"the expression is {len(expression):,} characters; the limit is {MAX_EXPRESSION:,}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CalculatorError(f"{_quoted(expression)} is not an arithmetic expression ({type(exc).__name__})") from None
    for node in ast.walk(tree):
        what = type(node).__name__ if not isinstance(node, ast.Constant) else f"a {type(node.value).__name__} literal"
        if not isinstance(node, _NODES) or (isinstance(node, ast.Constant) and (
                isinstance(node.value, bool) or not isinstance(node.value, (int, float)))):
            raise CalculatorError(f"{_quoted(expression)} is not an arithmetic expression: {what} is not allowed")
    functions = {name: _checked(fn) for name, fn in _MATH.items()}
    evaluator = SimpleEval(operators=_OPERATORS, functions=functions, names={"pi": math.pi, "e": math.e})
    try:
        value = evaluator.eval(expression, previously_parsed=tree.body)
    except CalculatorError:
        raise
    except (InvalidExpression, ArithmeticError, TypeError, ValueError, RecursionError) as exc:
        raise CalculatorError(f"{_quoted(expression)}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError(f"{_quoted(expression)} is not an arithmetic expression")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError(f"{_quoted(expression)} is not a finite number")
    return value


def now(timezone: Literal["local", "utc"] = "local", fmt: Optional[str] = None) -> str:
    """The current date and time (ISO 8601, or strftime `fmt`)."""
    moment = _dt.datetime.now(_dt.timezone.utc) if timezone == "utc" else _dt.datetime.now().astimezone()
    return moment.strftime(fmt) if fmt else moment.isoformat(timespec="seconds")


def finetune_task(kernel, data: str, out: str, model: Optional[str] = None, method: str = "lora", rank: int = 8,
                  epochs: float = 1.0, lr: float = 2e-4, batch_size: int = 8, max_steps: Optional[int] = None,
                  eval: Optional[str] = None, seed: int = 0) -> dict:  # noqa: A002 - the CLI's name
    """Fine-tune a PEFT adapter on JSONL data and install it as module `out`."""
    job = kernel.finetune(model=model, data=data, out=out, method=method, rank=rank, epochs=epochs, lr=lr,
                          batch_size=batch_size, max_steps=max_steps, eval=eval, seed=seed)
    result = job.wait()
    return {"module": out, "steps": result.steps, "eval_loss": result.eval_loss,
            "base_eval_loss": result.base_eval_loss, "data_errors": result.data_errors}


def mem_find(kernel, query: str, within: str = "/", k: int = 5) -> list:
    """Search memory (memfs) by meaning: the best passage per file, with its path and score."""
    return kernel.mem.find(query, within, k)


def mem_cat(kernel, path: str) -> str:
    """Read a file from memory (memfs)."""
    return kernel.mem.cat(path)


def mem_write(kernel, path: str, text: str) -> dict:
    """Write (create or replace) a file in memory (memfs)."""
    return kernel.mem.write(path, text)


@hookimpl
def register_tools(register):
    register(calculator)
    register(now)
    register(mem_find, capabilities=["memfs.read"])
    register(mem_cat, capabilities=["memfs.read"])
    register(mem_write, capabilities=["memfs.write"])


@hookimpl
def register_tasks(register):
    register("finetune", finetune_task)
