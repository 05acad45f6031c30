"""Built-in tools and tasks, shipped as a plugin through the public hooks."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Literal, Optional

from .hookspecs import hookimpl

_MATH = {name: getattr(math, name) for name in ("sqrt", "sin", "cos", "tan", "log", "log10", "exp", "floor",
                                                 "ceil", "fabs")}
_MATH.update(abs=abs, round=round, min=min, max=max)


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression (+ - * / // % **, parentheses, sqrt, log, sin, pi, e...).

    The expression is parsed, never passed to Python's eval: names and calls outside the math
    functions are refused."""
    from simpleeval import SimpleEval

    evaluator = SimpleEval(functions=_MATH, names={"pi": math.pi, "e": math.e})
    value = evaluator.eval(expression)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{expression!r} is not an arithmetic expression")
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
