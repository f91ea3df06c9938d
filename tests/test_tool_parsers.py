"""Tool-call parsers: every format, malformed input, reasoning, and streaming equivalence."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from rlserve.tools import (
    PARSERS,
    ParseResult,
    StreamingToolParser,
    ToolCall,
    get_parser,
    parse_tool_calls,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
            },
        },
    },
    {"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}},
]
FORMATS = ["hermes", "llama3_json", "json", "xml", "pythonic", "qwen3_coder"]
NESTED = {"query": "q", "filters": {"years": [2020, 2021], "flags": {"exact": True}}}


# --- building model outputs in each format -------------------------------------------


def _text_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def one_call(fmt: str, name: str, args: dict[str, Any]) -> str:
    """A single call's text in ``fmt`` (for list formats, one list element / object)."""
    if fmt == "hermes":
        return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
    if fmt == "llama3_json":
        return json.dumps({"name": name, "parameters": args})
    if fmt == "json":
        return json.dumps({"name": name, "arguments": args})
    if fmt == "pythonic":
        return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    if fmt == "xml":
        params = "".join(
            f'<parameter name="{k}">{_text_value(v)}</parameter>' for k, v in args.items()
        )
        return f'<invoke name="{name}">{params}</invoke>'
    params = "".join(f"<parameter={k}>\n{_text_value(v)}\n</parameter>\n" for k, v in args.items())
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


def calls_block(fmt: str, pieces: list[str]) -> str:
    """Several single-call texts combined the way ``fmt`` expects."""
    if fmt == "llama3_json":
        return "<|python_tag|>" + "; ".join(pieces)
    if fmt == "pythonic":
        return "[" + ", ".join(pieces) + "]"
    if fmt == "xml":
        return "<function_calls>\n" + "\n".join(pieces) + "\n</function_calls>"
    return "\n".join(pieces)


def block(fmt: str, *calls: tuple[str, dict[str, Any]]) -> str:
    return calls_block(fmt, [one_call(fmt, name, args) for name, args in calls])


MALFORMED = {
    "hermes": '<tool_call>{"name": "search", "arguments": {"query": }}</tool_call>',
    "llama3_json": '{"name": "search", "parameters": {"query": ]}',
    "json": '{"name": "search", "arguments": {"query": ,}}',
    "xml": '<invoke name="search"><parameter name="query">unclosed</invoke>',
    "pythonic": "search(query=)",
    "qwen3_coder": "<tool_call>\n<function=search\n<parameter=query>\nx\n</tool_call>",
}


def check_positions(text: str, result: ParseResult) -> None:
    for item in [*result.calls, *result.errors]:
        assert text[item.start_pos : item.end_pos] == item.raw_text
        assert item.raw_text


# --- one-shot parsing, per format -------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_single_call(fmt: str) -> None:
    text = block(fmt, ("search", {"query": "cats", "k": 3}))
    result = get_parser(fmt).parse(text, TOOLS)
    assert [(c.name, c.arguments) for c in result.calls] == [("search", {"query": "cats", "k": 3})]
    assert result.errors == []
    assert result.content.strip() == ""
    check_positions(text, result)


@pytest.mark.parametrize("fmt", FORMATS)
def test_multiple_calls(fmt: str) -> None:
    text = block(fmt, ("search", {"query": "a"}), ("calc", {"expr": "1+1"}), ("search", {"k": 2}))
    result = get_parser(fmt).parse(text, TOOLS)
    assert [(c.name, c.arguments) for c in result.calls] == [
        ("search", {"query": "a"}),
        ("calc", {"expr": "1+1"}),
        ("search", {"k": 2}),
    ]
    assert len({c.id for c in result.calls}) == 3
    check_positions(text, result)


@pytest.mark.parametrize("fmt", FORMATS)
def test_calls_inside_surrounding_text(fmt: str) -> None:
    call = block(fmt, ("calc", {"expr": "2*3"}))
    text = f"Let me compute that.\n{call}\nI will wait for the result."
    result = get_parser(fmt).parse(text, TOOLS)
    assert [(c.name, c.arguments) for c in result.calls] == [("calc", {"expr": "2*3"})]
    assert result.content == "Let me compute that.\n\nI will wait for the result."
    check_positions(text, result)


@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_call_beside_good_one(fmt: str) -> None:
    good = one_call(fmt, "calc", {"expr": "7*6"})
    if fmt == "llama3_json":
        text = f"<|python_tag|>{MALFORMED[fmt]}; {good}"
    else:
        text = calls_block(fmt, [MALFORMED[fmt], good])
    result = get_parser(fmt).parse(f"Before.\n{text}\nAfter.", TOOLS)
    assert [(c.name, c.arguments) for c in result.calls] == [("calc", {"expr": "7*6"})]
    assert len(result.errors) == 1
    assert "search" in result.errors[0].raw_text
    assert result.content.startswith("Before.") and result.content.endswith("After.")


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_tool_name_is_an_error(fmt: str) -> None:
    text = block(fmt, ("rm_rf", {"path": "/"}), ("search", {"query": "ok"}))
    result = get_parser(fmt).parse(text, TOOLS)
    assert [c.name for c in result.calls] == ["search"]
    assert [e.name for e in result.errors] == ["rm_rf"]
    assert "unknown tool" in result.errors[0].message
    # Without a tool list every name is accepted.
    assert [c.name for c in get_parser(fmt).parse(text).calls] == ["rm_rf", "search"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_arguments(fmt: str) -> None:
    text = block(fmt, ("search", NESTED))
    result = get_parser(fmt).parse(text)
    assert [c.arguments for c in result.calls] == [NESTED]
    assert json.loads(result.calls[0].to_openai()["function"]["arguments"]) == NESTED


@pytest.mark.parametrize("fmt", FORMATS)
def test_reasoning_is_stripped_and_returned(fmt: str) -> None:
    hidden = block(fmt, ("calc", {"expr": "no"}))
    text = f"<think>maybe {hidden}</think>Answer.\n{block(fmt, ('calc', {'expr': 'yes'}))}"
    result = get_parser(fmt).parse(text, TOOLS)
    assert [c.arguments for c in result.calls] == [{"expr": "yes"}]
    assert result.reasoning == f"maybe {hidden}"
    assert result.content.startswith("Answer.")


# --- format specifics --------------------------------------------------------------------


def test_hermes_closing_tag_inside_json_string() -> None:
    text = (
        '<tool_call>{"name": "search", "arguments": {"query": "x </tool_call> y"}}</tool_call>'
        '<tool_call>{"name": "calc", "arguments": {}}</tool_call>'
    )
    result = get_parser("hermes").parse(text, TOOLS)
    assert [c.arguments for c in result.calls] == [{"query": "x </tool_call> y"}, {}]
    assert result.errors == [] and result.content == ""


def test_hermes_parameters_key_and_string_arguments() -> None:
    text = (
        '<tool_call>{"name": "search", "parameters": {"k": 1}}</tool_call>'
        '<tool_call>{"name": "search", "arguments": "{\\"k\\": 2}"}</tool_call>'
        '<tool_call>{"name": "search", "arguments": "{not json"}</tool_call>'
    )
    result = get_parser("hermes").parse(text)
    assert [c.arguments for c in result.calls] == [{"k": 1}, {"k": 2}]
    assert [e.message for e in result.errors] == ["arguments string is not valid JSON"]


def test_hermes_missing_closing_tag_at_end_is_tolerated() -> None:
    result = get_parser("hermes").parse('Hi <tool_call>{"name": "calc", "arguments": {}}')
    assert [c.name for c in result.calls] == ["calc"] and result.content == "Hi "


def test_json_leaves_other_json_in_content() -> None:
    text = 'Config: {"name": "Bob", "age": 3} then [{"name": "calc", "arguments": {"x": 1}}]'
    result = get_parser("json").parse(text)
    assert [c.arguments for c in result.calls] == [{"x": 1}]
    assert result.content == 'Config: {"name": "Bob", "age": 3} then '


def test_llama3_object_inside_a_sentence_is_not_a_call() -> None:
    text = 'See {"name": "calc", "parameters": {}} here\n{"name": "calc", "parameters": {}}'
    result = get_parser("llama3_json").parse(text)
    assert len(result.calls) == 1 and result.calls[0].start_pos == text.rindex('{"name')
    assert "<|python_tag|>" not in get_parser("llama3_json").parse("<|python_tag|>").content


def test_pythonic_never_evaluates(tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    text = f'[search(query=__import__("os").system("touch {marker}")), calc(expr="1")]'
    result = get_parser("pythonic").parse(text, TOOLS)
    assert not marker.exists()
    assert [c.name for c in result.calls] == ["calc"]
    assert "not a literal" in result.errors[0].message


def test_pythonic_alias_and_code_in_prose() -> None:
    text = "Use print(x) to debug.\nprint(x)\n[1] is a reference\ncalc(expr='2')"
    result = get_parser("function").parse(text, TOOLS)
    assert [c.arguments for c in result.calls] == [{"expr": "2"}]
    assert result.content == "Use print(x) to debug.\nprint(x)\n[1] is a reference\n"


def test_pythonic_positional_arguments_are_errors() -> None:
    result = get_parser("pythonic").parse("[calc(1, 2)]")
    assert result.calls == [] and "positional" in result.errors[0].message


def test_qwen3_coder_values_follow_the_schema() -> None:
    text = (
        "<tool_call>\n<function=search>\n<parameter=query>\n123\n</parameter>\n"
        "<parameter=k>\n7\n</parameter>\n</function>\n</tool_call>"
    )
    typed = get_parser("qwen3_coder").parse(text, TOOLS).calls[0].arguments
    untyped = get_parser("qwen3_coder").parse(text).calls[0].arguments
    assert typed == {"query": "123", "k": 7}
    assert untyped == {"query": 123, "k": 7}


def test_xml_values_json_decoded_else_strings() -> None:
    text = (
        '<function_calls><invoke name="calc"><parameter name="a">5</parameter>'
        '<parameter name="b">hello world</parameter><parameter name="c">{"x": [1]}</parameter>'
        "</invoke></function_calls>"
    )
    assert get_parser("xml").parse(text).calls[0].arguments == {
        "a": 5,
        "b": "hello world",
        "c": {"x": [1]},
    }


def test_unclosed_leading_reasoning_block() -> None:
    text = 'pondering </tool_call> stuff</think>\n<tool_call>{"name": "calc", "arguments": {}}'
    result = get_parser("hermes").parse(text)
    assert result.reasoning == "pondering </tool_call> stuff"
    assert [c.name for c in result.calls] == ["calc"] and result.content == "\n"
    unterminated = get_parser("hermes").parse("<think>still thinking")
    assert unterminated.reasoning == "still thinking" and unterminated.content == ""
    assert get_parser("hermes").parse("a</think>b", think_open=False).content == "a</think>b"


def test_to_openai_shape() -> None:
    call = ToolCall("calc", {"expr": "1"}, "raw", 0, 3)
    out = call.to_openai()
    assert out["id"].startswith("call_") and out["type"] == "function"
    assert out["function"] == {"name": "calc", "arguments": '{"expr": "1"}'}
    assert ToolCall("calc", {}, "r", 0, 1).id != ToolCall("calc", {}, "r", 0, 1).id


# --- bad input ---------------------------------------------------------------------------


def test_unknown_parser_name() -> None:
    with pytest.raises(ValueError, match="hermes"):
        get_parser("nope")
    with pytest.raises(ValueError):
        get_parser(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StreamingToolParser("nope")
    assert set(FORMATS) | {"function"} == set(PARSERS)


def test_bad_text_and_tools() -> None:
    with pytest.raises(ValueError):
        parse_tool_calls(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_tool_calls("x", "hermes", tools=[{"function": {}}])
    with pytest.raises(ValueError):
        parse_tool_calls("x", "hermes", tools="search")  # type: ignore[arg-type]


# --- streaming ---------------------------------------------------------------------------


def stream(fmt: str, text: str, sizes: list[int], **kwargs: Any) -> tuple[Any, ...]:
    parser = StreamingToolParser(fmt, **kwargs)
    events, pos = [], 0
    for size in sizes:
        events += parser.feed(text[pos : pos + size])
        pos += size
    events += parser.finish()
    return (
        "".join(e.text for e in events if e.kind == "content"),
        "".join(e.text for e in events if e.kind == "reasoning"),
        [e.call for e in events if e.kind == "tool_call"],
        [e.error for e in events if e.kind == "error"],
    )


def random_sizes(n: int, rng: random.Random) -> list[int]:
    sizes = []
    while n > 0:
        sizes.append(min(n, rng.randint(1, 9)))
        n -= sizes[-1]
    return sizes


def sample_texts(fmt: str) -> list[str]:
    good = one_call(fmt, "calc", {"expr": "7*6"})
    malformed = (
        f"<|python_tag|>{MALFORMED[fmt]}; {good}"
        if fmt == "llama3_json"
        else calls_block(fmt, [MALFORMED[fmt], good])
    )
    return [
        block(fmt, ("search", {"query": "cats", "k": 3})),
        "Intro text.\n" + block(fmt, ("search", {"query": "a"}), ("calc", {"x": 1})) + "\nBye",
        f"Before.\n{malformed}\nAfter.",
        block(fmt, ("rm_rf", {"path": "/"}), ("search", NESTED)),
        "<think>plan: " + block(fmt, ("calc", {})) + "</think>\nText <tool_c {[ (",
        "No calls here; just text with < and { and [brackets].",
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("think_open", [None, False])
def test_streaming_equals_parse_for_any_chunking(fmt: str, think_open: bool | None) -> None:
    rng = random.Random(f"{fmt}-{think_open}")
    for text in sample_texts(fmt):
        ref = get_parser(fmt).parse(text, TOOLS, think_open=think_open)
        expected = (ref.content, ref.reasoning, ref.calls, ref.errors)
        chunkings = [[1] * len(text), [len(text)]] + [
            random_sizes(len(text), rng) for _ in range(8)
        ]
        for sizes in chunkings:
            got = stream(fmt, text, sizes, tools=TOOLS, think_open=think_open)
            assert got == expected, (text, sizes)


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "{",
    "}",
    '"',
    '"name"',
    '"arguments"',
    ":",
    ",",
    "[",
    "]",
    "\n",
    " ",
    ";",
    "<|python_tag|>",
    "<function=calc>",
    "<parameter=x>",
    "</parameter>",
    "</function>",
    "<function_calls>",
    "</function_calls>",
    '<invoke name="calc">',
    "</invoke>",
    "calc(",
    ")",
    "x=1",
    "'",
    "\\",
    "<think>",
    "</think>",
    "abc",
    "<tool_c",
    '"""',
    '{"name": "calc", "arguments": {"a": 1}}',
    "[calc(a=1)]",
    'search(query="z")',
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_streaming_equals_parse_on_fragment_soup(fmt: str) -> None:
    rng = random.Random(fmt)
    for _ in range(40):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 20)))
        ref = get_parser(fmt).parse(text, TOOLS)
        for sizes in ([1] * len(text), random_sizes(len(text), rng)):
            got = stream(fmt, text, sizes, tools=TOOLS)
            assert got == (ref.content, ref.reasoning, ref.calls, ref.errors), (text, sizes)


def test_streaming_holds_back_a_partial_tag() -> None:
    parser = StreamingToolParser("hermes", TOOLS, think_open=False)
    first = parser.feed("Hello <tool_c")
    assert [(e.kind, e.text) for e in first] == [("content", "Hello ")]
    assert parser.feed('all>{"name": "calc", "arguments": {"e": 1}') == []
    done = parser.feed("}</tool_call> ok")
    assert [e.kind for e in done] == ["tool_call", "content"]
    assert done[0].call is not None and done[0].call.arguments == {"e": 1}
    assert done[0].index == 0
    assert parser.finish() == []
    with pytest.raises(RuntimeError):
        parser.feed("more")


def test_streaming_releases_text_that_is_not_a_tag() -> None:
    parser = StreamingToolParser("hermes", think_open=False)
    assert [e.text for e in parser.feed("a <tool")] == ["a "]
    assert [e.text for e in parser.feed("box b")] == ["<toolbox b"]


def test_streaming_reasoning_events() -> None:
    parser = StreamingToolParser("hermes")
    events = parser.feed("<think>abc</th") + parser.feed("ink>Hi") + parser.finish()
    assert "".join(e.text for e in events if e.kind == "reasoning") == "abc"
    assert "".join(e.text for e in events if e.kind == "content") == "Hi"


# --- server-side formatting of replies (ToolCallFormat) ------------------------------------

CALL = '<tool_call>\n{"name": "calc", "arguments": {"x": 1}}\n</tool_call>'
SPECIAL = ["<|im_end|>", "<|eot_id|>", "</s>"]  # the tokenizer's special tokens, as passed


def _format_both_ways(text: str, **kwargs: Any) -> tuple[dict[str, Any], str | None, list]:
    """`message()` of the whole reply, and the streamed content (None when no delta had any)
    and calls, fed one character at a time."""
    from rlserve.server.tool_calls import ToolCallFormat

    whole = ToolCallFormat("hermes", TOOLS, False, **kwargs).message(text)
    streamed = ToolCallFormat("hermes", TOOLS, False, **kwargs)
    deltas = [streamed.delta(0, ch, final=False) for ch in text] + [streamed.delta(0, "", True)]
    pieces = [d["content"] for d in deltas if "content" in d]
    calls = [
        (c["function"]["name"], c["function"]["arguments"])
        for d in deltas
        for c in d.get("tool_calls", [])
    ]
    return whole, ("".join(pieces) if pieces else None), calls


@pytest.mark.parametrize("end", ["<|im_end|>", "\n<|im_end|>\n", "<|eot_id|>", "</s>", ""])
def test_call_only_reply_has_null_content_whole_and_streamed(end: str) -> None:
    # With skip_special_tokens false (the client's training defaults) the end-of-turn
    # token is in the text; OpenAI and vLLM send content null for a reply that only calls.
    whole, streamed, calls = _format_both_ways(CALL + end, special_tokens=SPECIAL)
    assert whole["content"] is None and streamed is None
    assert [c["function"]["name"] for c in whole["tool_calls"]] == ["calc"]
    assert calls == [("calc", '{"x": 1}')]


def test_text_beside_calls_keeps_its_words_and_loses_the_end_token() -> None:
    whole, streamed, _ = _format_both_ways(
        "Let me  compute.\n" + CALL + "<|im_end|>", special_tokens=SPECIAL
    )
    assert whole["content"] == streamed == "Let me  compute."
    whole, streamed, _ = _format_both_ways(CALL + "\nDone <x>.<|im_end|>", special_tokens=SPECIAL)
    assert whole["content"] == streamed == "\nDone <x>."


@pytest.mark.parametrize("tail", ["<|x|>", "<|im_end|", "<|eot_id|>"])
def test_text_that_only_looks_like_a_special_token_stays_content(tail: str) -> None:
    # Only the tokenizer's own special tokens are cut; `<|x|>` here is text the model wrote.
    whole, streamed, _ = _format_both_ways(CALL + "\nSee " + tail, special_tokens=["<|im_end|>"])
    assert whole["content"] == streamed == "\nSee " + tail


@pytest.mark.parametrize("text", ["The answer is 5.<|im_end|>", "a \n b  ", "", "<|im_end|>"])
def test_replies_without_calls_are_left_as_they_are(text: str) -> None:
    whole, streamed, calls = _format_both_ways(text, special_tokens=SPECIAL)
    assert whole["content"] == text and "tool_calls" not in whole and calls == []
    assert streamed == (text or None)


def test_the_request_check_refuses_unusable_tools() -> None:
    from rlserve.server.errors import APIError
    from rlserve.server.tool_calls import check_request_tools

    bad = [TOOLS[0], {"type": "function", "function": {"name": None}}]
    with pytest.raises(APIError) as err:
        check_request_tools(bad)
    assert err.value.status == 400 and err.value.param == "tools"
    assert "tools[1]" in err.value.message
    check_request_tools(None)
    check_request_tools(TOOLS)


# --- the tool formats seed 001 documents ---------------------------------------------------

SEED_JSON = """I will search.
{
    "tool": "search",
    "arguments": {
        "query": "Python tutorials",
        "max_results": 5
    }
}"""
SEED_XML = """<function_calls>
<invoke>
<tool_name>search</tool_name>
<parameters>
<query>Python tutorials</query>
<max_results>5</max_results>
</parameters>
</invoke>
</function_calls>"""
SEED_FUNCTION = 'search(query="Python tutorials", max_results=5)'
SEED_ARGS = {"query": "Python tutorials", "max_results": 5}


@pytest.mark.parametrize(
    ("fmt", "text"), [("json", SEED_JSON), ("xml", SEED_XML), ("function", SEED_FUNCTION)]
)
def test_seed001_formats_parse(fmt: str, text: str) -> None:
    result = get_parser(fmt).parse(text)
    assert [(c.name, c.arguments) for c in result.calls] == [("search", SEED_ARGS)]
    assert result.errors == []
    check_positions(text, result)


def test_seed001_json_list_parameters_key_and_schema() -> None:
    text = '[{"tool": "search", "parameters": {"query": "a"}}, {"tool": "calc", "arguments": {}}]'
    result = get_parser("json").parse(text, TOOLS)
    assert [(c.name, c.arguments) for c in result.calls] == [
        ("search", {"query": "a"}),
        ("calc", {}),
    ]
    unknown = get_parser("json").parse('{"tool": "rm", "arguments": {}}', TOOLS)
    assert unknown.calls == [] and "unknown tool 'rm'" in unknown.errors[0].message


def test_seed001_json_lookalikes() -> None:
    # "tool" without arguments is ordinary JSON; broken JSON that opens like a call is an error.
    plain = '{"tool": "hammer", "weight": 2}'
    assert get_parser("json").parse(plain).content == plain
    broken = get_parser("json").parse('{"tool": "search", "arguments": {"q": ,}}')
    assert broken.calls == [] and broken.errors[0].message == "tool call is not valid JSON"
    # llama3_json keeps reading only "name" objects
    assert get_parser("llama3_json").parse(SEED_JSON).calls == []


def test_seed001_xml_schema_types_and_mixed_forms() -> None:
    text = SEED_XML.replace(
        "</function_calls>",
        '<invoke name="calc"><parameter name="x">1</parameter></invoke>\n</function_calls>',
    )
    result = get_parser("xml").parse(text.replace("max_results", "k"), TOOLS)
    assert [(c.name, c.arguments) for c in result.calls] == [
        ("search", {"query": "Python tutorials", "k": 5}),
        ("calc", {"x": 1}),
    ]
    no_params = "<function_calls><invoke><tool_name>calc</tool_name></invoke></function_calls>"
    assert get_parser("xml").parse(no_params).calls[0].arguments == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<parameters><x>1</x></parameters>", "<invoke> without a <tool_name>"),
        ("<tool_name> </tool_name>", "<invoke> without a <tool_name>"),
        ("<tool_name>calc</tool_name><parameters><x>1</x>", "unclosed <parameters>"),
        ("<tool_name>calc</tool_name><parameters><x>1</parameters>", "unclosed <x> in"),
        ("<tool_name>calc</tool_name><parameters>x=1</parameters>", "malformed <parameters>"),
    ],
)
def test_seed001_xml_malformed(body: str, message: str) -> None:
    text = f"<function_calls><invoke>{body}</invoke></function_calls>"
    result = get_parser("xml").parse(text)
    assert result.calls == [] and message in result.errors[0].message
    check_positions(text, result)


@pytest.mark.parametrize(("fmt", "text"), [("json", SEED_JSON), ("xml", SEED_XML)])
def test_seed001_formats_stream_like_whole(fmt: str, text: str) -> None:
    rng = random.Random(fmt)
    ref = get_parser(fmt).parse(text, TOOLS)
    for sizes in ([1] * len(text), [len(text)], random_sizes(len(text), rng)):
        assert stream(fmt, text, sizes, tools=TOOLS) == (
            ref.content,
            ref.reasoning,
            ref.calls,
            ref.errors,
        )
