"""`tool_choice` "required" / named as a grammar: the text `forced_call_grammar` builds, what
it accepts, and generation on the bundled model under it."""

from __future__ import annotations

import json

import pytest

from rlserve import SamplingParams
from rlserve._checks import ParamError
from rlserve.engine.structured import GrammarCompiler, StructuredOutput, check_structured
from rlserve.tools import PARSERS, forced_call_prefixes, get_parser, parse_tool_calls
from rlserve.tools.choice import (
    JSON_CALL_CLOSINGS,
    added_token_texts,
    argument_schema,
    forced_call_grammar,
    lark_text,
)
from tests.support.calculator import CALCULATOR
from tests.support.numeric import max_abs_diff

# A tool the bundled model never saw: free arguments miss its schema, the grammar keeps it.
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
TOKENS = ("<tool_call>", "</tool_call>", "</think>", "<|im_end|>")
ASK = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 30?"},
]


def schema_problems(value: object, schema: dict) -> list[str]:
    """What in `value` breaks `schema`: jsonschema when installed, else a hand check of the
    keywords the schemas here use (type, properties, required, additionalProperties, enum,
    minimum, maximum)."""
    try:
        import jsonschema
    except ImportError:
        return _hand_checked(value, schema)
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]


def _hand_checked(value: object, schema: dict) -> list[str]:
    kinds = {"object": dict, "string": str, "integer": int}
    kind = kinds.get(schema.get("type", ""), object)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return [f"{value!r} is not of type {schema.get('type')}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{value!r} < {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{value!r} > {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{k!r} is missing" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            problems += [f"{k!r} is not allowed" for k in value if k not in properties]
        for key, item in value.items():
            problems += _hand_checked(item, properties.get(key, {}))
    return problems


def test_the_schema_check_finds_what_breaks_the_schema() -> None:
    assert schema_problems({"city": "Oslo", "days": 2}, WEATHER_SCHEMA) == []
    for bad in (
        {"city": "Rome", "days": 2},
        {"city": "Oslo", "days": 0},
        {"days": 2},
        {"city": "Oslo", "days": 2, "x": 1},
        {"city": "Oslo", "days": True},
        [],
    ):
        assert schema_problems(bad, WEATHER_SCHEMA), bad


@pytest.fixture(scope="module")
def compiler(bundled) -> GrammarCompiler:
    return GrammarCompiler(bundled.tokenizer, len(bundled.tokenizer), {2})


def accepts(compiler: GrammarCompiler, bundled, grammar: str, text: str) -> bool:
    """Whether `grammar` takes `text` (as the tokenizer spells it) and may end there."""
    matcher = compiler.matcher(StructuredOutput(grammar=grammar)).matcher
    ids = bundled.tokenizer.encode(text)
    return all(matcher.consume_token(t) for t in ids) and matcher.is_accepting()


def test_hermes_named_call_grammar_text() -> None:
    grammar = forced_call_grammar(
        NAMED_WEATHER, [WEATHER, CALCULATOR], "hermes", token_texts=TOKENS
    )
    schema = json.dumps(argument_schema(WEATHER_SCHEMA))
    assert grammar == (
        "start: call\n"
        "call: call_0\n"
        'call_0: <tool_call> "\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": " args_0 '
        '"}\\n" </tool_call>\n'
        f"args_0: %json {schema}\n"
    )


def test_required_offers_every_tool_and_repeats_unless_parallel_calls_are_off() -> None:
    tools = [WEATHER, CALCULATOR]
    grammar = forced_call_grammar("required", tools, "hermes", token_texts=TOKENS)
    assert grammar.startswith('start: call ("\\n" call)*\ncall: call_0 | call_1\n')
    assert '\\"calculator\\"' in grammar and '\\"get_weather\\"' in grammar
    single = forced_call_grammar("required", tools, "hermes", parallel_tool_calls=False)
    assert single.startswith("start: call\ncall: call_0 | call_1\n")
    thinking = forced_call_grammar("required", tools, "hermes", think_open=True, token_texts=TOKENS)
    assert thinking.startswith('start: </think> "\\n\\n" call (')


def test_every_format_gets_a_grammar_and_nothing_forced_gets_none() -> None:
    for parser in sorted(PARSERS):
        grammar = forced_call_grammar("required", [CALCULATOR], parser)
        check_structured(StructuredOutput(grammar=grammar))
    for choice in ("auto", "none", None):
        assert forced_call_grammar(choice, [CALCULATOR], "hermes") is None
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        forced_call_grammar("required", [CALCULATOR], "nope")


@pytest.mark.parametrize(
    ("choice", "tools", "message"),
    [
        ("required", [], "no tools"),
        ("sometimes", [CALCULATOR], "tool_choice must be"),
        ({"type": "function", "function": {"name": "nope"}}, [CALCULATOR], "not among"),
        ({"type": "function", "function": {}}, [CALCULATOR], "named tool_choice"),
        ("required", [{"type": "function", "function": {}}], "without a name"),
        ("required", [{"type": "function", "function": {"name": "f", "parameters": 3}}], "param"),
    ],
)
def test_bad_tool_choice_raises_as_for_prefixes(choice, tools, message) -> None:
    with pytest.raises(ValueError, match=message):
        forced_call_grammar(choice, tools, "hermes")


def test_lark_text_names_markers_as_tokens_and_quotes_the_rest() -> None:
    markers = ["</tool_call>", "<tool_call>"]
    assert lark_text("<tool_call>\n{", markers) == '<tool_call> "\\n{"'
    assert lark_text("}\n</tool_call>", markers) == '"}\\n" </tool_call>'
    assert lark_text('say "é"', markers) == '"say \\"é\\""'
    assert lark_text("<tool_call>", []) == '"<tool_call>"'
    assert lark_text("", markers) == ""


def test_argument_schema_defaults_to_an_object_in_the_templates_layout() -> None:
    assert argument_schema({})["type"] == "object"
    own = {"type": "object", "x-guidance": {"whitespace_flexible": True}}
    assert argument_schema(own) == own  # the tool's own llguidance options stay
    assert "x-guidance" not in WEATHER_SCHEMA  # a copy is changed, not the tool


def test_added_token_texts_include_the_plain_added_tokens(bundled) -> None:
    texts = added_token_texts(bundled.tokenizer)
    assert {"<tool_call>", "</tool_call>", "</think>", "<|im_end|>"} <= set(texts)
    assert added_token_texts(object()) == ()


@pytest.mark.parametrize("parser", sorted(JSON_CALL_CLOSINGS))
def test_each_json_format_grammar_takes_a_valid_call_its_parser_reads(
    parser, bundled, compiler
) -> None:
    tools = [WEATHER, CALCULATOR]
    grammar = forced_call_grammar(
        NAMED_WEATHER, tools, parser, token_texts=added_token_texts(bundled.tokenizer)
    )
    (prefix,) = forced_call_prefixes(NAMED_WEATHER, tools, parser)
    text = prefix + '{"city": "Oslo", "days": 3}' + JSON_CALL_CLOSINGS[parser]
    assert accepts(compiler, bundled, grammar, text)
    parsed = get_parser(parser).parse(text, tools)
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("get_weather", {"city": "Oslo", "days": 3})
    ]
    for bad in ('{"city": "Rome", "days": 3}', '{"city": "Oslo", "days": 9}', '{"days": 3}'):
        assert not accepts(compiler, bundled, grammar, prefix + bad + JSON_CALL_CLOSINGS[parser])


def test_required_grammar_takes_several_calls_and_named_exactly_one(bundled, compiler) -> None:
    tokens = added_token_texts(bundled.tokenizer)
    tools = [WEATHER, CALCULATOR]
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2"}}\n</tool_call>'
    required = forced_call_grammar("required", tools, "hermes", token_texts=tokens)
    named = forced_call_grammar(
        {"type": "function", "function": {"name": "calculator"}},
        tools,
        "hermes",
        token_texts=tokens,
    )
    assert accepts(compiler, bundled, required, call + "\n" + call)
    assert accepts(compiler, bundled, named, call)
    assert not accepts(compiler, bundled, named, call + "\n" + call)
    assert not accepts(compiler, bundled, required, "Sure: " + call)


def test_odd_names_and_descriptions_compile_and_match() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": 'wéird "name"',
            "parameters": {
                "type": "object",
                "description": 'braces } { and "quotes"\nand lines',
                "properties": {"q": {"type": "string", "format": "no-such-format"}},
            },
        },
    }
    check_structured(StructuredOutput(grammar=forced_call_grammar("required", [tool], "hermes")))


def test_a_schema_llguidance_cannot_compile_is_refused() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"properties": {"q": {"type": "string", "pattern": "(?=a)b"}}},
        },
    }
    grammar = forced_call_grammar("required", [tool], "hermes")
    with pytest.raises(ParamError, match="look-around"):
        check_structured(StructuredOutput(grammar=grammar))


def generate_call(bundled, choice, tools, *, seed: int, prompt=None, **grammar_kw):
    grammar = forced_call_grammar(
        choice, tools, "hermes", token_texts=added_token_texts(bundled.tokenizer), **grammar_kw
    )
    params = SamplingParams(
        temperature=1.0, seed=seed, max_tokens=80, structured=StructuredOutput(grammar=grammar)
    )
    prompt = bundled.render_chat(ASK, tools) if prompt is None else prompt
    return prompt, bundled.generate([prompt], params)[0].outputs[0]


@pytest.mark.parametrize("choice", ["required", NAMED_WEATHER])
def test_sampled_calls_parse_and_their_arguments_match_the_schema(bundled, choice) -> None:
    tools = [WEATHER, CALCULATOR]
    schemas = {"get_weather": WEATHER_SCHEMA, "calculator": CALCULATOR["function"]["parameters"]}
    names = set()
    for seed in range(6):
        _, out = generate_call(bundled, choice, tools, seed=seed)
        parsed = parse_tool_calls(out.text, "hermes", tools)
        assert out.finish_reason == "stop" and parsed.errors == [] and parsed.calls, out.text
        for call in parsed.calls:
            assert schema_problems(call.arguments, schemas[call.name]) == [], out.text
            names.add(call.name)
    assert names == ({"get_weather"} if choice == NAMED_WEATHER else {"calculator"})


def test_free_arguments_after_a_forced_prefix_miss_the_schema_the_grammar_keeps(bundled) -> None:
    # What the grammar adds: under prefix_choices alone the model writes the arguments it
    # knows (a calculator's) into get_weather's call.
    tools = [WEATHER, CALCULATOR]
    prompt = bundled.render_chat(ASK, tools)
    prefixes = forced_call_prefixes(NAMED_WEATHER, tools, "hermes")
    free = bundled.generate(
        [prompt], SamplingParams(temperature=0, max_tokens=80, prefix_choices=prefixes)
    )[0].outputs[0]
    (call,) = parse_tool_calls(free.text, "hermes", tools).calls
    assert schema_problems(call.arguments, WEATHER_SCHEMA) != []


def test_logprobs_under_the_grammar_are_the_models_own(bundled) -> None:
    prompt, out = generate_call(bundled, NAMED_WEATHER, [WEATHER, CALCULATOR], seed=3)
    scored = bundled.score(prompt, out.token_ids)
    assert max_abs_diff(scored, out.logprobs) < 1e-4
    # Masking renormalizes: under the sampled distribution each token is at least as likely.
    assert all(s >= m - 1e-5 for s, m in zip(out.sampling_logprobs, out.logprobs, strict=True))
    # The call is forced where the model would answer in text: certain only when sampled.
    assert out.sampling_logprobs[0] > -1e-3 and out.logprobs[0] < -1.0


def test_an_open_think_block_is_closed_before_the_call(bundled) -> None:
    tools = [WEATHER, CALCULATOR]
    prompt = bundled.render_chat(ASK, tools) + bundled.tokenizer.encode("<think>\n")
    _, out = generate_call(bundled, NAMED_WEATHER, tools, seed=1, prompt=prompt, think_open=True)
    assert out.text.startswith("</think>\n\n<tool_call>\n")
    parsed = parse_tool_calls(out.text, "hermes", tools, think_open=True)
    (call,) = parsed.calls
    assert schema_problems(call.arguments, WEATHER_SCHEMA) == []


# The formats whose arguments are not JSON: markup (xml, qwen3_coder) and Python calls.
# `OPTIONS` has typed, optional and nested parameters; `ANY` declares none.
OPTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "exact": {"type": "boolean"},
        "note": {"type": "string"},
        "where": {"type": "object", "properties": {"x": {"type": "number"}}},
    },
    "required": ["exact"],
}
OPTIONS = {"type": "function", "function": {"name": "options", "parameters": OPTIONS_SCHEMA}}
ANY = {"type": "function", "function": {"name": "anything"}}
MARKUP_TOOLS = [WEATHER, CALCULATOR, OPTIONS, ANY]


def qwen3_call(name: str, **values: str) -> str:
    params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in values.items())
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


def xml_calls(*invokes: tuple[str, dict[str, str]]) -> str:
    def invoke(name: str, values: dict[str, str]) -> str:
        params = "".join(f'<parameter name="{k}">{v}</parameter>\n' for k, v in values.items())
        return f'<invoke name="{name}">\n{params}</invoke>'

    return "<function_calls>\n" + "\n".join(invoke(*i) for i in invokes) + "\n</function_calls>"


# (format, text, the calls its parser reads); every text is one the grammar accepts.
VALID_CALLS = [
    (
        "qwen3_coder",
        qwen3_call("get_weather", city="Oslo", days="3"),
        [("get_weather", {"city": "Oslo", "days": 3})],
    ),
    (
        "qwen3_coder",
        qwen3_call("options", exact="true", note="a <b> c\nd")
        + "\n"
        + qwen3_call("anything", zz='{"q": 1}'),
        [("options", {"exact": True, "note": "a <b> c\nd"}), ("anything", {"zz": {"q": 1}})],
    ),
    (
        "qwen3_coder",
        qwen3_call("options", count="5", exact="false", where='{"x": 1.5}'),
        [("options", {"count": 5, "exact": False, "where": {"x": 1.5}})],
    ),
    (
        "xml",
        xml_calls(("get_weather", {"city": "Oslo", "days": "3"})),
        [("get_weather", {"city": "Oslo", "days": 3})],
    ),
    (
        "xml",
        xml_calls(("options", {"exact": "true"}), ("calculator", {"expression": "1 + 2"})),
        [("options", {"exact": True}), ("calculator", {"expression": "1 + 2"})],
    ),
    (
        "pythonic",
        '[get_weather(city="Oslo", days=3)]',
        [("get_weather", {"city": "Oslo", "days": 3})],
    ),
    (
        "pythonic",
        '[options(exact=True), options(count=1, exact=False, note="x", where={"x": 2})]',
        [
            ("options", {"exact": True}),
            ("options", {"count": 1, "exact": False, "note": "x", "where": {"x": 2}}),
        ],
    ),
    (
        "pythonic",
        '[anything(), anything(k=1, j="s")]',
        [("anything", {}), ("anything", {"k": 1, "j": "s"})],
    ),
]
INVALID_CALLS = [
    ("qwen3_coder", qwen3_call("get_weather", city="Rome", days="3")),  # not in the enum
    ("qwen3_coder", qwen3_call("get_weather", city="Oslo", days="9")),  # above the maximum
    ("qwen3_coder", qwen3_call("get_weather", days="3")),  # a required parameter missing
    ("qwen3_coder", qwen3_call("options", exact="yes")),  # not a boolean
    ("qwen3_coder", qwen3_call("options", exact="true", other="1")),  # not a parameter
    ("xml", xml_calls(("get_weather", {"days": "3", "city": "Oslo"}))),  # out of schema order
    ("xml", xml_calls(("options", {"count": "1.5", "exact": "true"}))),  # not an integer
    ("pythonic", '[get_weather(city="Oslo", days=0)]'),
    ("pythonic", "[options(exact=true)]"),  # JSON's boolean is not Python's
    ("pythonic", '[get_weather("Oslo", 3)]'),  # positional arguments
]


@pytest.mark.parametrize(("parser", "text", "calls"), VALID_CALLS)
def test_markup_and_pythonic_grammars_take_calls_their_parsers_read(
    parser, text, calls, bundled, compiler
) -> None:
    grammar = forced_call_grammar(
        "required", MARKUP_TOOLS, parser, token_texts=added_token_texts(bundled.tokenizer)
    )
    assert accepts(compiler, bundled, grammar, text), text
    parsed = parse_tool_calls(text, parser, MARKUP_TOOLS)
    assert parsed.errors == [] and [(c.name, c.arguments) for c in parsed.calls] == calls


@pytest.mark.parametrize(("parser", "text"), INVALID_CALLS)
def test_markup_and_pythonic_grammars_refuse_calls_off_the_schema(
    parser, text, bundled, compiler
) -> None:
    grammar = forced_call_grammar(
        "required", MARKUP_TOOLS, parser, token_texts=added_token_texts(bundled.tokenizer)
    )
    assert not accepts(compiler, bundled, grammar, text), text


MARKUP_PARSERS = ["xml", "pythonic", "qwen3_coder"]
SAMPLES = 16


def sampled_calls(bundled, parser: str, choice, tools, *, grammar: bool, **grammar_kw):
    """`SAMPLES` seeded temperature-1 replies forced to call, each parsed (or None when
    the call is cut, broken or off the tools' schemas)."""
    if grammar:
        text = forced_call_grammar(
            choice, tools, parser, token_texts=added_token_texts(bundled.tokenizer), **grammar_kw
        )
        forcing = {"structured": StructuredOutput(grammar=text)}
    else:
        forcing = {"prefix_choices": forced_call_prefixes(choice, tools, parser)}
    params = [
        SamplingParams(temperature=1.0, seed=seed, max_tokens=120, **forcing)
        for seed in range(SAMPLES)
    ]
    prompt = bundled.render_chat(ASK, tools)
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    results = []
    for request in bundled.generate([prompt] * SAMPLES, params):
        out = request.outputs[0]
        parsed = parse_tool_calls(out.text, parser, tools)
        valid = out.finish_reason == "stop" and not parsed.errors and parsed.calls
        valid = valid and all(
            schema_problems(c.arguments, schemas[c.name]) == [] for c in parsed.calls
        )
        results.append(parsed.calls if valid else None)
    return results


@pytest.mark.parametrize("parser", MARKUP_PARSERS)
def test_sampled_markup_calls_all_parse_with_valid_arguments(bundled, parser) -> None:
    # The bundled model learnt hermes calls to its calculator: with only the opening
    # forced it writes that (0 of 16 valid, measured); the grammar keeps every sample.
    tools = [WEATHER, CALCULATOR]
    under_grammar = sampled_calls(bundled, parser, NAMED_WEATHER, tools, grammar=True)
    assert all(calls is not None for calls in under_grammar)
    assert {c.name for calls in under_grammar for c in calls} == {"get_weather"}
    free = sampled_calls(bundled, parser, NAMED_WEATHER, tools, grammar=False)
    assert sum(calls is not None for calls in free) < SAMPLES // 2


SWITCH_SCHEMA = {
    "type": "object",
    "properties": {"on": {"type": "boolean"}, "level": {"enum": [1, 2, 3]}},
    "required": ["on"],
    "additionalProperties": False,
}
SWITCH = {"type": "function", "function": {"name": "switch", "parameters": SWITCH_SCHEMA}}


@pytest.mark.parametrize("parser", MARKUP_PARSERS)
def test_required_without_parallel_calls_gives_one_valid_call(bundled, parser) -> None:
    # Tools without free-text strings: those the tiny model runs on with in markup.
    tools = [WEATHER, SWITCH]
    results = sampled_calls(
        bundled, parser, "required", tools, grammar=True, parallel_tool_calls=False
    )
    assert all(calls is not None and len(calls) == 1 for calls in results), results
