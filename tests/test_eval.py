"""`llmos eval` and classify ensembles: rows read per metric, targets parsed, answers compared; on the
real SmolLM2 kernel, perplexity from the kernel's prompt log-probabilities, accuracy on rows with known
answers, classification through the classify task, an ensemble of two modules, and the CLI's table."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from llmos.kernel.errors import InvalidRequestError
from llmos.plugins.evaluation.data import load_rows, scored
from llmos.plugins.evaluation.run import Target, correct, evaluate, keywords
from llmos.plugins.jsonl import DataFileError

from .util import LLMOS


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- no model ---------------------------------------------------------------------------------------

def test_rows_are_checked_per_metric_with_line_numbers(tmp_path):
    f = write(tmp_path / "d.jsonl", [{"text": "a b c"}, "{oops", {"prompt": "p"}, {"prompt": "2+2=", "completion": "4"}])
    metric, data = load_rows(f)
    assert metric == "perplexity" and len(data.examples) == 2 and data.lines == (1, 4)
    assert [e.line for e in data.errors] == [2, 3]
    f = write(tmp_path / "c.jsonl", [{"text": "good", "label": "pos"}, {"text": "x", "label": "a", "labels": ["b"]}])
    metric, data = load_rows(f)
    assert metric == "choice" and len(data.examples) == 1 and "holds the row's label" in str(data.errors[0])
    with pytest.raises(DataFileError, match="no usable exact row"):
        load_rows(write(tmp_path / "e.jsonl", [{"text": "no answer"}]), "exact")
    with pytest.raises(InvalidRequestError, match="metric must be one of"):
        load_rows(f, "bleu")
    # a JSON string may hold U+2028 (a line separator to str.splitlines, not to JSONL)
    raw = json.dumps({"text": "one\u2028two"}, ensure_ascii=False) + "\r\n" + json.dumps({"text": "three"}) + "\n"
    (tmp_path / "u.jsonl").write_text(raw, encoding="utf-8")
    _, data = load_rows(tmp_path / "u.jsonl")
    assert [r["text"] for r in data.examples] == ["one\u2028two", "three"] and data.errors == []
    assert scored({"text": "whole", "completion": "x"}) == ("whole", "")  # text wins: one kind per row
    assert scored({"prompt": "2+2=", "completion": "4"}) == ("2+2=4", "2+2=")


def test_targets_and_answer_comparison():
    assert Target.parse("smollm2") == Target("smollm2")
    assert Target.parse("smollm2:cat") == Target("smollm2", ("cat",))
    assert Target.parse("smollm2:a+b") == Target("smollm2", ("a", "b"))
    assert Target.parse("/models/x.gguf") == Target("/models/x.gguf")
    assert correct("exact", " paris. ", "Paris", "") and not correct("exact", "It is Paris", "Paris", "")
    assert correct("contains", "The capital is PARIS!", "paris", "")
    assert keywords("Ada's cat is named Zorblax.", "What is Ada's cat called?") == {"zorblax"}
    assert correct("keywords", "Zorblax.", "The cat's name is Zorblax.", "Who is Ada's cat?")
    assert not correct("keywords", "Her cat has no name.", "Ada's cat is named Zorblax.", "Who is Ada's cat?")


# -- the real model ---------------------------------------------------------------------------------

@pytest.mark.model
def test_perplexity_is_the_kernels_token_log_likelihood(kernel, tmp_path):
    text = "The sun rises in the east and sets in the west. Water freezes at zero degrees Celsius."
    shuffled = " ".join(sorted(text.split(), key=lambda w: (len(w), w)))
    f = write(tmp_path / "p.jsonl", [{"text": text}, {"prompt": "Question: what is 2+2? Answer:", "completion": " 4"}])
    _, data = load_rows(f)
    result = evaluate(kernel, Target("smollm2"), "perplexity", data.examples)
    lps = kernel.generate(text, max_tokens=1, prompt_logprobs=True).prompt_logprobs
    whole = kernel.generate("Question: what is 2+2? Answer: 4", max_tokens=1, prompt_logprobs=True).prompt_logprobs
    n_prompt = len(kernel.tokenize("Question: what is 2+2? Answer:"))
    completion = whole[n_prompt - 1:]  # the completion's tokens only
    assert result.tokens == len(lps) + len(completion)
    expected = math.exp(-(sum(lps) + sum(completion)) / result.tokens)
    assert result.score == pytest.approx(expected, rel=0.02)  # the batch shape may move logits a little
    scrambled = evaluate(kernel, Target("smollm2"), "perplexity", [{"text": shuffled}])
    assert scrambled.score > 2 * evaluate(kernel, Target("smollm2"), "perplexity", [{"text": text}]).score


@pytest.mark.model
def test_answer_accuracy_on_rows_with_known_answers(kernel, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"}], "answer": "Paris"},
            {"messages": [{"role": "user", "content": "What is the capital of France?"}], "answer": "London"},
            {"messages": [{"role": "user", "content": "What is the capital of France?"},
                          {"role": "assistant", "content": "Paris"}]},
            {"prompt": "The capital of France is the city of", "answer": "Madrid"}]
    _, data = load_rows(write(tmp_path / "qa.jsonl", rows), "contains")
    result = evaluate(kernel, Target("smollm2"), "contains", data.examples, lines=data.lines)
    assert result.score == 0.5 and [m["line"] for m in result.misses] == [2, 4]
    assert result.misses[0]["expected"] == "London" and "paris" in result.misses[0]["got"].lower()


@pytest.fixture(scope="module")
def two_modules(kernel, llmos_home, tmp_path_factory):
    from .lora import make_lora, torch_model_dir

    src = torch_model_dir(kernel, llmos_home)
    names = []
    for seed in (11, 12):
        name = f"ens{seed}"
        if name not in {m.name for m in kernel.module_store.list()}:
            kernel.install_module(str(make_lora(src, tmp_path_factory.mktemp(name), seed=seed,
                                                targets=["q_proj", "v_proj"], scale=0.5)), name=name,
                                  base="smollm2")
        names.append(name)
    return names


@pytest.mark.model
def test_classify_ensemble_averages_two_modules(kernel, two_modules):
    a, b = two_modules
    labels = ["positive", "negative"]
    text = "I loved every minute of it, what a wonderful film!"
    out = kernel.run_task("classify", {"text": text, "labels": labels, "samples": 3, "adapters": [a, b]})
    assert set(out["members"]) == {a, b} and out["label"] in labels
    for label in labels:
        assert out["scores"][label] == pytest.approx((out["members"][a][label] + out["members"][b][label]) / 2)
    assert sum(out["scores"].values()) == pytest.approx(1.0)
    with pytest.raises(InvalidRequestError, match="adapters must name 1 to 8"):
        kernel.run_task("classify", {"text": text, "labels": labels, "adapters": [f"m{i}" for i in range(9)]})


@pytest.mark.model
@pytest.mark.cli
def test_cli_compares_targets_side_by_side(kernel, two_modules, tmp_path, llmos_home):
    rows = [{"text": "I love this, it is wonderful!", "label": "positive"},
            {"text": "This is awful and I hate it.", "label": "negative"}]
    f = write(tmp_path / "cls.jsonl", rows + ["{broken"])
    run = subprocess.run([LLMOS, "--local", "eval", "smollm2", f"smollm2:{two_modules[0]}",
                          f"smollm2:{'+'.join(two_modules)}", "--data", str(f), "--json"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "LLMOS_HOME": str(llmos_home)})
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["metric"] == "choice" and report["rows"] == 2
    assert [r["target"] for r in report["results"]] == ["smollm2", f"smollm2:{two_modules[0]}",
                                                         f"smollm2:{'+'.join(two_modules)}"]
    assert all(0 <= r["score"] <= 1 for r in report["results"])
    table = subprocess.run([LLMOS, "--local", "eval", "smollm2", "--data", str(f)], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "LLMOS_HOME": str(llmos_home)})
    assert "skipped line 3: invalid JSON" in table.stderr and "choice (accuracy)" in table.stdout
    bad = subprocess.run([LLMOS, "--local", "eval", "smollm2:a+b", "--data", str(f), "--metric", "perplexity"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "an ensemble of modules is evaluated with --metric choice only" in bad.stderr
