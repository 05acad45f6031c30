"""Agents, tool calls and NLP tasks with the real SmolLM2 on llama.cpp (grammar-constrained)."""

from __future__ import annotations

import json

import pytest

from llmos.benchmarks.constrain_bench import PROMPTS, TOOLS  # B14's 20 tool-call requests
from llmos.kernel.proc.agents import ProcessState
from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.proc.structured import submit_json
from llmos.kernel.proc.tool_calling import (Function, arguments_prompt, bounded, choice_prompt, choice_schema, parse_arguments,
                                       parse_choice)

from .util import run_llmos

pytestmark = pytest.mark.model

_BY_TOOL = {
    "calculator": ["What is 17 * 23?", "Compute the square root of 2.", "How much is 1234 + 4321?",
                   "What is 2 to the power of 10?", "Divide 100 by 7.", "What's the cosine of 0?",
                   "What is 3.5 times 4?", "Calculate 15% of 240."],
    "now": ["What time is it?", "What is today's date in UTC?", "Is it morning or evening now?"],
    "mem_find": ["Find my notes about owls.", "Search memory for the meeting agenda.", "Which notes mention Paris?",
                 "Look up what I wrote about the budget."],
    "mem_cat": ["Read the file /notes/todo.md.", "Show me /docs/readme.md."],
    "mem_write": ["Save 'buy milk' to /notes/shopping.md.", "Remember that the meeting moved to Friday.",
                  "Write a note called /ideas/app.md about a todo app."],
}
EXPECTED_TOOL = {prompt: tool for tool, prompts in _BY_TOOL.items() for prompt in prompts}


def test_constrained_tool_calls_always_parse_and_fit_the_schema(kernel):
    tools = kernel.tools.all()
    functions = [Function(n, tools[n].description, tools[n].schema) for n in TOOLS]
    schema = choice_schema(functions, may_answer=False)
    ask = lambda system, text, s: submit_json(kernel, s, messages=[{"role": "system", "content": system},  # noqa: E731
                                                                    {"role": "user", "content": text}],
                                              max_tokens=256, owner="test", temperature=0)
    choices = [ask(choice_prompt(functions, may_answer=False), p, schema) for p in PROMPTS]  # batched together
    names = [parse_choice(h.result().text, functions, may_answer=False) for h in choices]
    assert set(names) <= set(TOOLS) and len(set(names)) >= 2, names
    fns = [next(f for f in functions if f.name == n) for n in names]
    arguments = [ask(arguments_prompt(fn), p, bounded(fn.parameters)) for fn, p in zip(fns, PROMPTS)]
    for fn, h in zip(fns, arguments):
        call, args = parse_arguments(h.result().text, fn)  # raises unless valid JSON matching the schema
        assert call["function"]["name"] == fn.name and isinstance(args, dict)
    # the routing means something even for a 135M model: arithmetic reaches the calculator. Not any one
    # prompt, nor the other tools: between two memory tools the choice is often a near-tie that flips
    # with the batch's numerics (what the shared kernel's prefix cache holds; tests/greedy.py), measured
    # 11/20 and 13/20 right overall, 7/8 of the arithmetic both times.
    arithmetic = [n for p, n in zip(PROMPTS, names) if EXPECTED_TOOL[p] == "calculator"]
    assert arithmetic.count("calculator") >= 0.75 * len(arithmetic), list(zip(PROMPTS, names))


def test_an_agent_calls_a_tool_and_answers(kernel):
    proc = kernel.spawn("Compute the square root of 2 with the calculator.", tools=["calculator"], max_steps=4)
    assert proc.wait(120)
    assert proc.state == ProcessState.FINISHED, proc.error
    [call] = [e for e in proc.events() if e.kind == "tool_call"]
    assert call.data["name"] == "calculator" and isinstance(call.data["arguments"]["expression"], str)
    assert proc.answer and proc.tokens > 0
    stored = kernel.sessions.get(proc.session_id)
    assert stored.state == "finished" and stored.messages[-1]["content"] == proc.answer


@pytest.mark.parametrize("text", ["I loved this movie, it was wonderful!", "The service was slow and rude.",
                                  "Das Wetter ist heute schön.", ""])
def test_classify_always_returns_a_label_and_scores(kernel, text):
    labels = ["positive", "negative", "neutral"]
    if not text:
        with pytest.raises(InvalidRequestError) as info:
            kernel.run_task("classify", {"text": text, "labels": labels})
        assert info.value.param == "text"
        return
    result = kernel.run_task("classify", {"text": text, "labels": labels, "samples": 3})
    assert result["label"] in labels and set(result["scores"]) == set(labels)
    assert abs(sum(result["scores"].values()) - 1) < 1e-9 and result["scores"][result["label"]] > 0


@pytest.mark.parametrize(("text", "person"), [
    ("Barack Obama visited Paris in July 2015 with Google executives.", "Barack Obama"),
    ("Marie Curie worked at the University of Paris.", "Marie Curie"),
    ("nothing to see here, just lowercase words.", None)])
def test_extract_always_returns_entities_with_true_spans(kernel, text, person):
    result = kernel.run_task("extract", {"text": text})
    json.dumps(result)
    if person is None:  # no name in the text: nothing is made up
        assert result["entities"] == [], result
    else:  # the person is found, with its span
        assert {"text": person, "type": "PERSON", "start": 0, "end": len(person)} in result["entities"], result
    for ent in result["entities"]:
        assert text[ent["start"]:ent["end"]] == ent["text"] and ent["type"] in ("PERSON", "ORGANIZATION",
                                                                                 "LOCATION", "DATE")


def test_summarize_respects_max_words(kernel):
    text = "The quick brown fox jumps over the lazy dog. " * 6 + "Foxes are clever animals that live in forests."
    result = kernel.run_task("summarize", {"text": text, "max_words": 8})
    assert 0 < result["words"] <= 8 and len(result["summary"].rstrip("…").split()) <= 8


@pytest.mark.cli
def test_tasks_and_agents_from_the_cli():
    r = run_llmos("task", "run", "classify", "--param", "text=What a great day!", "--param",
                  "labels=positive,negative", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["label"] in ("positive", "negative")
    r = run_llmos("agent", "run", "What time is it?", "--tools", "now", "--max-steps", "3", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "step" and any(e["event"] == "tool_call" and e["name"] == "now" for e in events)
    end = events[-1]
    assert end["event"] == "end" and end["state"] == "finished" and end["answer"]
    shown = run_llmos("sessions", "show", end["session"], "--json")
    assert json.loads(shown.stdout)["state"] == "finished"
    listed = json.loads(run_llmos("sessions", "ls", "--json").stdout)
    assert end["session"] in [s["id"] for s in listed]
    assert run_llmos("sessions", "rm", end["session"]).returncode == 0
    missing = run_llmos("sessions", "show", end["session"])
    assert missing.returncode == 2 and "llmos sessions ls" in missing.stderr
    bad = run_llmos("agent", "run", "x", "--tools", "no_such_tool")
    assert bad.returncode == 2 and "unknown tool" in bad.stderr
    for prompt in ("My name is Ada.", "What is my name?"):
        assert run_llmos("run", "--session", "intro", "-n", "16", prompt).returncode == 0
    chat = json.loads(run_llmos("sessions", "show", "intro", "--json").stdout)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "user", "assistant"]
    assert chat["messages"][2]["content"] == "What is my name?" and chat["kind"] == "chat"


@pytest.mark.cli
def test_the_embedding_example_runs(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "agent_embed.py"
    r = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "LLMOS_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "killed: killed" in r.stdout and "answer:" in r.stdout and "**assistant → calculator**" in r.stdout
