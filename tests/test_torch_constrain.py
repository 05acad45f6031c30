"""JSON-schema constrained decoding on the torch driver (llguidance token masks), with the real SmolLM2.

Kernel level: outputs parse and fit several schemas; tool calls (`tools`/`tool_choice`'s schema) and agents
work on torch as on llama.cpp; bad schemas are refused at submit. Driver level (a private TorchDriver over
the kernel's dequantized copy): a constrained and a free row in one batch, EOS only once the value is
complete, a preempted sequence resumed mid-value, a schema that gets past submit failing its row alone.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from llmos.benchmarks.constrain_bench import PROMPTS, TOOLS
from llmos.drivers.base import DriverOptions
from llmos.drivers.torch_constrain import Grammars
from llmos.drivers.torch_driver import TorchDriver
from llmos.kernel.errors import InvalidRequestError
from llmos.kernel.proc.agents import ProcessState
from llmos.kernel.proc.structured import submit_json
from llmos.kernel.proc.tool_calling import (Function, arguments_prompt, bounded, call_schema, check_call, choice_prompt,
                                            choice_schema, parse_arguments, parse_choice, parse_reply, tools_prompt)
from llmos.kernel.sched.interface import NewSequence, SchedulerOutput
from llmos.kernel.sched.request import SamplingParams

from .test_hardening_engine import ASK, BAD_SCHEMAS

pytestmark = pytest.mark.model

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
SCHEMAS = [  # (id, prompt, schema)
    ("object with required fields", "Invent a person and give their name and age.", PERSON),
    ("enum", "Which colour is the sky?", {"enum": ["red", "green", "blue"]}),
    ("array", "List three fruits.", {"type": "array", "items": {"type": "string", "maxLength": 20},
                                     "minItems": 2, "maxItems": 4}),
    ("nested", "Describe a book and its author.", {
        "type": "object", "required": ["title", "author"], "additionalProperties": False,
        "properties": {"title": {"type": "string", "maxLength": 40},
                       "author": {"type": "object", "required": ["name", "born"], "additionalProperties": False,
                                  "properties": {"name": {"type": "string", "maxLength": 30},
                                                 "born": {"type": "integer", "minimum": 1000, "maximum": 2024}}}}}),
    ("integer", "How many legs does a spider have?", {"type": "integer", "minimum": 0, "maximum": 100}),
]
WEATHER = Function("get_weather", "Current weather in a city.",
                   {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
                    "required": ["city", "unit"]})


@pytest.fixture(scope="module")
def torch_kernel(kernel):
    kernel.load("smollm2", driver="torch")
    return kernel


@pytest.fixture(scope="module")
def driver(torch_kernel, llmos_home):
    """A TorchDriver of its own (steps driven by the test), loading the kernel's dequantized copy."""
    spec = torch_kernel.load("smollm2", driver="torch").spec
    drv = TorchDriver(spec, DriverOptions(n_ctx=1024, max_seqs=4, extra={"cache_dir": llmos_home / "cache"}))
    drv.load()
    yield drv
    drv.unload()


def decode(drv: TorchDriver, rid: str, first: int, steps: int) -> list[int]:
    """`first` and the tokens of up to `steps` more decode steps of `rid`, to its EOS."""
    tokens = [first]
    for step in range(steps):
        if tokens[-1] in drv.info.eos_token_ids:
            break
        out = drv.execute(SchedulerOutput(1000 + step, num_scheduled_tokens={rid: 1}))
        assert rid not in out.failed, out.failed
        tokens.append(out.sampled[rid])
    return tokens


def admit(drv: TorchDriver, *news: NewSequence):
    return drv.execute(SchedulerOutput(1, new=news, num_scheduled_tokens={n.request_id: len(n.token_ids) for n in news}))


def value(drv: TorchDriver, tokens: list[int]):
    return json.loads(drv.decode([t for t in tokens if t not in drv.info.eos_token_ids]))


@pytest.mark.parametrize("prompt, schema", [c[1:] for c in SCHEMAS], ids=[c[0] for c in SCHEMAS])
def test_constrained_output_parses_fits_the_schema_and_stops_at_its_end(torch_kernel, prompt, schema):
    c = torch_kernel.chat([{"role": "user", "content": prompt}], driver="torch", json_schema=schema, max_tokens=120,
                          temperature=0)
    jsonschema.validate(json.loads(c.text), schema)
    assert c.finish_reason == "stop", c.text  # EOS, forced once the value was complete


def test_sampled_constrained_outputs_fit_the_schema(torch_kernel):
    handles = [torch_kernel.submit(messages=[{"role": "user", "content": SCHEMAS[0][1]}], driver="torch",
                                   json_schema=PERSON, max_tokens=80, temperature=1.0, seed=seed) for seed in range(4)]
    for h in handles:  # batched together, each row masked by its own matcher
        jsonschema.validate(json.loads(h.result(120).text), PERSON)


def test_eos_is_allowed_only_once_the_value_is_complete(driver):
    eos = sorted(driver.info.eos_token_ids)
    width = driver.info.vocab_size
    constraint = Grammars(driver.tokenizer, width, eos).start(PERSON)
    assert not constraint.allowed(width)[eos].any()
    tokens = driver.tokenize('{"name": "Ann", "age": 41', add_special=False)
    for token in tokens:
        assert constraint.allowed(width)[token] and not constraint.allowed(width)[eos].any()
        constraint.accept(token)
    closing = driver.tokenize("}", add_special=False)[0]
    constraint.accept(closing)
    assert constraint.allowed(width).nonzero().flatten().tolist() == [t for t in eos if t < width]
    assert constraint.error is None


def test_a_constrained_and_a_free_row_share_a_batch_and_the_free_one_decodes_as_alone(driver):
    prompt = tuple(driver.tokenize_chat(ASK))
    json_ask = tuple(driver.tokenize_chat([{"role": "user", "content": SCHEMAS[0][1]}]))
    free = NewSequence("free", prompt, SamplingParams(max_tokens=16, temperature=0))
    shaped = NewSequence("shaped", json_ask, SamplingParams(max_tokens=60, temperature=0, json_schema=PERSON))
    out = admit(driver, free, shaped)
    firsts = dict(out.sampled)
    together = {"free": [firsts["free"]], "shaped": [firsts["shaped"]]}
    for step in range(60):
        live = [rid for rid, toks in together.items() if toks[-1] not in driver.info.eos_token_ids
                and len(toks) < (16 if rid == "free" else 60)]
        if not live:
            break
        out = driver.execute(SchedulerOutput(10 + step, num_scheduled_tokens=dict.fromkeys(live, 1)))
        for rid in live:
            together[rid].append(out.sampled[rid])
    driver.execute(SchedulerOutput(100, released=("free", "shaped")))
    jsonschema.validate(value(driver, together["shaped"]), PERSON)
    alone = NewSequence("alone", prompt, SamplingParams(max_tokens=16, temperature=0))
    first = admit(driver, alone).sampled["alone"]
    assert decode(driver, "alone", first, len(together["free"]) - 1) == together["free"]
    driver.execute(SchedulerOutput(101, released=("alone",)))


def test_a_preempted_constrained_sequence_resumes_where_its_grammar_was(driver):
    prompt = tuple(driver.tokenize_chat([{"role": "user", "content": SCHEMAS[3][1]}]))
    schema = SCHEMAS[3][2]
    params = SamplingParams(max_tokens=80, temperature=0, json_schema=schema)
    whole = decode(driver, "whole", admit(driver, NewSequence("whole", prompt, params)).sampled["whole"], 80)
    driver.execute(SchedulerOutput(200, released=("whole",)))
    cut = 6  # preempted mid-value: its tokens so far come back as a resumed sequence
    head = decode(driver, "head", admit(driver, NewSequence("head", prompt, params)).sampled["head"], cut - 1)
    driver.execute(SchedulerOutput(201, released=("head",)))
    resumed = NewSequence("resumed", prompt + tuple(head), params, prompt_len=len(prompt))
    tail = decode(driver, "resumed", admit(driver, resumed).sampled["resumed"], 80)
    driver.execute(SchedulerOutput(202, released=("resumed",)))
    assert head + tail == whole
    jsonschema.validate(value(driver, whole), schema)


def test_a_schema_that_gets_past_submit_fails_its_own_row_alone(driver):
    prompt = tuple(driver.tokenize_chat(ASK))
    bad = NewSequence("bad", prompt, SamplingParams(max_tokens=8, temperature=0, json_schema={"type": "foo"}))
    good = NewSequence("good", prompt, SamplingParams(max_tokens=8, temperature=0))
    out = admit(driver, bad, good)
    assert set(out.failed) == {"bad"} and '"type": "foo"' in out.failed["bad"], out.failed
    assert "good" in out.sampled and driver.stats()["active_sequences"] == 1
    driver.execute(SchedulerOutput(300, released=("good", "bad")))


TORCH_BAD = [c for c in BAD_SCHEMAS if c[0] != "30,000 repeats in a pattern"]  # a GBNF limit: llguidance takes it
TORCH_BAD.append(("unimplemented keyword", {"type": "array", "uniqueItems": True}, "uniqueItems"))


@pytest.mark.parametrize("schema, names", [c[1:] for c in TORCH_BAD], ids=[c[0] for c in TORCH_BAD])
def test_a_bad_json_schema_is_refused_on_torch_at_submit_naming_the_problem(torch_kernel, schema, names):
    with pytest.raises(InvalidRequestError) as info:
        torch_kernel.submit(messages=ASK, json_schema=schema, max_tokens=8, driver="torch")
    assert info.value.param == "json_schema" and names in str(info.value), info.value


def test_a_tool_call_on_torch_is_valid(torch_kernel):
    """What the HTTP server does for `tools` with tool_choice "required" and "auto"."""
    for may_answer in (False, True):
        reply = torch_kernel.chat(
            [{"role": "system", "content": tools_prompt([WEATHER], may_answer=may_answer)},
             {"role": "user", "content": "What is the weather in Paris, in celsius?"}],
            driver="torch", json_schema=call_schema([WEATHER], may_answer=may_answer), max_tokens=80, temperature=0)
        content, calls = parse_reply(reply.text)
        if calls is None:
            assert may_answer and content is not None
            continue
        [call] = calls
        assert call["function"]["name"] == "get_weather" and isinstance(check_call(call, [WEATHER])["city"], str)
        assert reply.text.startswith('{"name": '), reply.text  # properties in the schema's order, on one line


def test_constrained_tool_calls_on_torch_always_parse_and_fit_the_schema(torch_kernel):
    tools = torch_kernel.tools.all()
    functions = [Function(n, tools[n].description, tools[n].schema) for n in TOOLS]
    schema = choice_schema(functions, may_answer=False)
    prompts = PROMPTS[:8]

    def ask(system: str, text: str, s: dict):
        return submit_json(torch_kernel, s, messages=[{"role": "system", "content": system},
                                                      {"role": "user", "content": text}],
                           max_tokens=128, owner="test", temperature=0, driver="torch")

    choices = [ask(choice_prompt(functions, may_answer=False), p, schema) for p in prompts]  # batched together
    names = [parse_choice(h.result(300).text, functions, may_answer=False) for h in choices]
    assert set(names) <= set(TOOLS), names
    fns = [next(f for f in functions if f.name == n) for n in names]
    arguments = [ask(arguments_prompt(fn), p, bounded(fn.parameters)) for fn, p in zip(fns, prompts)]
    for fn, h in zip(fns, arguments):
        call, args = parse_arguments(h.result(300).text, fn)  # raises unless valid JSON matching the schema
        assert call["function"]["name"] == fn.name and isinstance(args, dict)


def test_an_agent_on_torch_calls_a_tool_and_answers(torch_kernel):
    """The model given as its Hugging Face directory, which only the torch driver loads."""
    hf_dir = torch_kernel.load("smollm2", driver="torch").driver.model_dir
    try:
        proc = torch_kernel.spawn("Compute the square root of 2 with the calculator.", tools=["calculator"],
                                  max_steps=4, model=str(hf_dir))
        assert proc.wait(300)
        assert proc.state == ProcessState.FINISHED, proc.error
        assert {e["driver"] for e in torch_kernel.engines() if e["model"] == str(hf_dir.resolve())} == {"torch"}
        [call] = [e for e in proc.events() if e.kind == "tool_call"]
        assert call.data["name"] == "calculator" and isinstance(call.data["arguments"]["expression"], str)
        assert proc.answer
    finally:
        torch_kernel.unload(str(hf_dir))
