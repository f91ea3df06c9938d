"""`tool_choice` "required" / named: forced call prefixes and the prefix constraint under them."""

import pytest

from rlserve import SamplingParams
from rlserve.engine.prefix_constraint import TokenTexts, allowed_token_ids
from rlserve.tools import PARSERS, forced_call_prefixes, get_parser, validate_tools
from tests.support.calculator import CALCULATOR
from tests.support.numeric import max_abs_diff

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

# What a model writes after each format's forced prefix, for a call with {"x": 1}.
REST_OF_CALL = {
    "hermes": '{"x": 1}}\n</tool_call>',
    "llama3_json": '{"x": 1}}',
    "json": '{"x": 1}}',
    "xml": '<parameter name="x">1</parameter>\n</invoke>\n</function_calls>',
    "pythonic": "x=1)]",
    "function": "x=1)]",
    "qwen3_coder": "<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>",
}


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_each_format_prefix_opens_a_call_its_parser_reads(parser):
    tools = [WEATHER, CALCULATOR]
    (prefix,) = forced_call_prefixes(
        {"type": "function", "function": {"name": "get_weather"}}, tools, parser
    )
    parsed = get_parser(parser).parse(prefix + REST_OF_CALL[parser], tools)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", {"x": 1})]
    assert parsed.errors == []


def test_required_allows_every_offered_tool_and_auto_none_force_nothing():
    required = forced_call_prefixes("required", [WEATHER, CALCULATOR], "hermes")
    assert [p.split('"')[3] for p in required] == ["get_weather", "calculator"]
    assert forced_call_prefixes("auto", [CALCULATOR], "hermes") == []
    assert forced_call_prefixes("none", [CALCULATOR], "hermes") == []
    assert forced_call_prefixes(None, None, "hermes") == []
    (thinking,) = forced_call_prefixes("required", [CALCULATOR], "hermes", think_open=True)
    assert thinking.startswith("</think>\n\n<tool_call>")


@pytest.mark.parametrize(
    ("choice", "tools", "message"),
    [
        ("required", [], "no tools"),
        ("sometimes", [CALCULATOR], "tool_choice must be"),
        ({"type": "function", "function": {"name": "nope"}}, [CALCULATOR], "not among"),
        ({"type": "function", "function": {}}, [CALCULATOR], "named tool_choice"),
        ({"type": "custom", "function": {"name": "calculator"}}, [CALCULATOR], "named tool_choice"),
        ("required", [{"type": "function", "function": {}}], "without a name"),
    ],
)
def test_bad_tool_choice_raises(choice, tools, message):
    with pytest.raises(ValueError, match=message):
        forced_call_prefixes(choice, tools, "hermes")


def test_allowed_tokens_keep_the_text_on_the_way_to_a_choice(bundled):
    texts = TokenTexts(bundled.tokenizer)
    choices = ['<tool_call>\n{"name": "a"', '<tool_call>\n{"name": "b"']
    first = allowed_token_ids(texts, choices, "")
    assert bundled.tokenizer.convert_tokens_to_ids("<tool_call>") in first
    for token_id in first:
        text = bundled.tokenizer.decode([token_id])
        assert any(c.startswith(text) or text.startswith(c) for c in choices), text
    middle = allowed_token_ids(texts, choices, '<tool_call>\n{"name": "')
    decoded = {bundled.tokenizer.decode([t]) for t in middle}
    assert {"a", "b"} <= decoded and not any(d.startswith("c") for d in decoded)
    assert allowed_token_ids(texts, choices, '<tool_call>\n{"name": "a", ') is None


def test_prefix_choices_force_the_start_and_keep_model_logprobs(bundled):
    prompt = bundled.render_chat(
        [SYSTEM, {"role": "user", "content": "What is 12 + 30?"}], [WEATHER, CALCULATOR]
    )
    free = bundled.generate([prompt], SamplingParams(temperature=0, max_tokens=24))[0]
    assert not free.outputs[0].text.startswith("<tool_call>")
    choices = forced_call_prefixes(
        {"type": "function", "function": {"name": "get_weather"}}, [WEATHER, CALCULATOR], "hermes"
    )
    forced = bundled.generate(
        [prompt], SamplingParams(temperature=0, max_tokens=24, prefix_choices=choices)
    )[0].outputs[0]
    assert forced.text.startswith(choices[0])
    # Reported logprobs are the model's own, constrained or not: equal to teacher forcing.
    scored = bundled.score(prompt, forced.token_ids)
    assert max_abs_diff(scored, forced.logprobs) < 1e-4
    assert forced.logprobs[0] < -1.0 and forced.sampling_logprobs[0] > -1e-3


def test_seeded_sampling_under_prefix_choices_lands_on_a_choice(bundled):
    prompt = bundled.render_chat([{"role": "user", "content": "hello"}])
    choices = ["Sure: ", "No. "]
    params = [
        SamplingParams(temperature=1.0, seed=s, max_tokens=8, prefix_choices=choices)
        for s in range(12)
    ]
    outs = bundled.generate([prompt] * 12, params)
    starts = [next(c for c in choices if o.outputs[0].text.startswith(c)) for o in outs]
    assert set(starts) == set(choices)
    again = bundled.generate([prompt], params[3])[0].outputs[0]
    assert again.token_ids == outs[3].outputs[0].token_ids


@pytest.mark.parametrize("bad", ["one string", [""], [3], ["ok", None]])
def test_bad_prefix_choices_are_refused(bad):
    with pytest.raises(ValueError, match="prefix_choices"):
        SamplingParams(prefix_choices=bad)


UNUSABLE_TOOLS = [
    ([CALCULATOR, {"type": "function", "function": {}}], r"tools\[1\]: a function without a name"),
    ([{"type": "function", "function": {"name": 5}}], r"tools\[0\]: .*got 5"),
    ([{"type": "function", "function": {"name": " "}}], r"tools\[0\]: .*without a name"),
    ([CALCULATOR, [1, 2]], r"tools\[1\]: a tool definition must be an object, got list"),
    ([{"type": "function", "function": "calculator"}], r"tools\[0\]: function must be an object"),
    ([{"type": "function", "function": {"name": "f", "parameters": [1]}}], r"tools\[0\]: .*param"),
    ([{"type": "retrieval", "function": {"name": "f"}}], r"tools\[0\]: type must be 'function'"),
    ({"name": "calculator"}, "tools must be a list"),
]


@pytest.mark.parametrize(("tools", "message"), UNUSABLE_TOOLS)
def test_validate_tools_names_the_bad_entry(tools, message):
    with pytest.raises(ValueError, match=message):
        validate_tools(tools)
    validate_tools(None)
    validate_tools([WEATHER, CALCULATOR, CALCULATOR["function"]])  # the bare function form too


@pytest.mark.parametrize(("tools", "message"), UNUSABLE_TOOLS[:2])
def test_forced_call_prefixes_reads_the_tools_only_to_force_a_call(tools, message):
    # Requests are checked where they come in (the server's check_request_tools,
    # Engine.chat), once; "auto" and "none" force nothing and leave the tools alone.
    assert forced_call_prefixes("auto", tools, "hermes") == []
    with pytest.raises(ValueError, match=message):
        forced_call_prefixes("required", tools, "hermes")


def test_batch_generate_with_tools_refuses_unusable_tools_before_generating(bundled):
    from rlserve.tools import batch_generate_with_tools

    calls = []
    real_generate = bundled.generate
    bundled.generate = lambda *a, **k: calls.append(a) or real_generate(*a, **k)  # a spy only
    try:
        with pytest.raises(ValueError, match=r"tools\[1\]: a function without a name"):
            batch_generate_with_tools(bundled, ["hi"], [CALCULATOR, {"function": {}}])
    finally:
        del bundled.generate
    assert calls == []
