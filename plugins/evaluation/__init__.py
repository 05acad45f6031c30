"""Evaluation: score models, modules, merged and quantized models on the same rows, through the kernel.

`data.py` reads the rows a metric needs (JSONL, bad rows reported by line); `run.py` submits them to
the kernel in windows (the scheduler batches them) and aggregates perplexity or accuracy. The CLI
(`llmos eval`, shell/cli_eval.py) and fine-tuning's `--eval` report both use `run.evaluate`.
"""
