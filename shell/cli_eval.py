"""`llmos eval A B C --data FILE.jsonl`: score models, modules, merged and quantized models on the same
rows through the kernel (the resident one when up), one table side by side, with a progress bar."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from llmos.kernel.errors import InvalidRequestError, LlmosError

from .cli_common import err, fail, kernel_session, out


def eval_command(
    targets: List[str] = typer.Argument(..., help="MODEL, MODEL:MODULE, or for choice MODEL:MOD1+MOD2 (an ensemble)."),
    data: str = typer.Option(..., "--data", help="JSONL rows (docs/deploy.md lists what each metric reads)."),
    metric: str = typer.Option("auto", "--metric", help="perplexity | exact | contains | keywords | choice (auto: choice when "
                                                        "rows have a label, else perplexity)."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="exact/contains: the longest answer generated."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Evaluate models and modules on the same rows, side by side: perplexity or accuracy."""
    from llmos.plugins.evaluation.data import load_rows
    from llmos.plugins.evaluation.run import Target, evaluate

    try:
        metric, dataset = load_rows(data, metric)
        parsed = [Target.parse(t).check(metric) for t in targets]
        if limit is not None and limit < 1:
            raise InvalidRequestError("limit must be >= 1", param="limit")
        if not 1 <= max_tokens <= 4096:
            raise InvalidRequestError("max_tokens must be between 1 and 4096", param="max_tokens")
    except LlmosError as exc:
        raise fail(exc, as_json) from None
    rows, lines = dataset.examples[:limit], dataset.lines[:limit]
    if not as_json:
        for problem in dataset.errors:
            err.print(f"[yellow]skipped[/] {problem}")
    bar = Progress(TextColumn("[bold]eval[/] {task.fields[target]}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=err, disable=as_json or not err.is_terminal)
    results = []
    with kernel_session(as_json) as kernel, bar:
        for target in parsed:
            task = bar.add_task("eval", total=len(rows), target=str(target))
            results.append(evaluate(kernel, target, metric, rows, lines=lines, max_tokens=max_tokens,
                                    progress=lambda done, _total, task=task: bar.update(task, completed=done)))
            if not err.is_terminal and not as_json:
                err.print(f"{target}: {len(rows)} rows done")
    if as_json:
        typer.echo(json.dumps({"metric": metric, "data": str(dataset.path), "rows": len(rows),
                               "results": [r.as_dict() for r in results]}, indent=2))
        return
    better = "lower is better" if metric == "perplexity" else "accuracy"
    table = Table("target", f"{metric} ({better})", "rows", "tokens scored" if metric == "perplexity" else "wrong",
                  "seconds", title=f"{dataset.path.name}: {len(rows)} rows")
    for r in results:
        score = f"{r.score:.3f}" if metric == "perplexity" else f"{r.score:.1%}"
        extra = str(r.tokens) if metric == "perplexity" else str(round(r.rows * (1 - r.score)))
        table.add_row(r.target, score, str(r.rows), extra, f"{r.seconds:.1f}")
    out.print(table)
