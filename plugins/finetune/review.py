"""After a fine-tuning run: ask the new module (and its base model) the data's questions through the
kernel, with `llmos eval`'s own code (metric `keywords`: the answer's words the question lacks), so a
run that installed a module which learned nothing says so, with the flags to try, instead of passing
silently."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..evaluation.data import CHECKS
from ..evaluation.run import Target, evaluate
from .data import load_jsonl
from .trainer import FinetuneOptions, FinetuneResult

#: rows asked at most (the eval file's, else the training data's)
MAX_REVIEW_ROWS = 16


def review(kernel, opts: FinetuneOptions, result: FinetuneResult) -> FinetuneResult:
    """`result` with `review` filled: {module, base, rows} accuracies and the verdict (None: converged)."""
    if result.module is None:
        return result
    data = load_jsonl(opts.eval or opts.data, param="eval" if opts.eval else "data")
    rows = [r for r in data.examples if CHECKS["keywords"](r) is None][:MAX_REVIEW_ROWS]
    report: dict[str, Any] = {"rows": len(rows), "module": None, "base": None}
    if rows:
        base = result.module.base_model
        module = evaluate(kernel, Target(base, (result.module.name,)), "keywords", rows)
        before = evaluate(kernel, Target(base), "keywords", rows)
        report.update(module=module.score, base=before.score, misses=module.misses[:3])
    accuracy = (round(report["module"] * len(rows)), len(rows)) if rows else None
    return replace(result, review={**report, "verdict": result.verdict_with(accuracy)})
