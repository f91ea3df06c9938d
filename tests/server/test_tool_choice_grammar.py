"""`tool_choice` "required" / named through the real server and the `openai` SDK: the
arguments of the forced call match the tool's schema (a grammar constrains the whole call)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.calculator import CALCULATOR
from tests.test_tool_grammar import (
    ASK,
    SWITCH,
    SWITCH_SCHEMA,
    WEATHER,
    WEATHER_SCHEMA,
    schema_problems,
)

NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "calculator": CALCULATOR["function"]["parameters"]}


def create(oai: openai.OpenAI, model: str, **kw):
    body = {"model": model, "messages": ASK, "tools": [WEATHER, CALCULATOR], "max_tokens": 64}
    return oai.chat.completions.create(**{**body, **kw})


def assert_valid_calls(choice, names: set[str]) -> None:
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name in names
        arguments = json.loads(call.function.arguments)
        assert schema_problems(arguments, SCHEMAS[call.function.name]) == [], arguments


def test_named_call_arguments_match_a_schema_the_model_never_saw(oai, model) -> None:
    reply = create(oai, model, tool_choice=NAMED_WEATHER, n=4, temperature=1.0, seed=7)
    for choice in reply.choices:
        assert_valid_calls(choice, {"get_weather"})
        assert len(choice.message.tool_calls) == 1


def test_named_call_streams_the_same_arguments(oai, model) -> None:
    kw = {"tool_choice": NAMED_WEATHER, "temperature": 0}
    whole = create(oai, model, **kw).choices[0]
    assert_valid_calls(whole, {"get_weather"})
    chunks = [c for c in create(oai, model, **kw, stream=True) if c.choices]
    streamed = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [t.function.name for t in streamed if t.function.name] == ["get_weather"]
    arguments = "".join(t.function.arguments or "" for t in streamed)
    assert arguments == whole.message.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("parallel", [None, False])
def test_required_calls_any_tool_with_valid_arguments(oai, model, parallel) -> None:
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    reply = create(oai, model, tool_choice="required", n=4, temperature=1.0, seed=3, **extra)
    for choice in reply.choices:
        assert_valid_calls(choice, {"get_weather", "calculator"})
        if parallel is False:
            assert len(choice.message.tool_calls) == 1


def test_the_tool_call_constraint_wins_over_response_format(oai, model) -> None:
    # vLLM's order: the tool's schema replaces the response_format one (a forced call has
    # no content for response_format to shape).
    reply = create(
        oai,
        model,
        tool_choice=NAMED_WEATHER,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert_valid_calls(reply.choices[0], {"get_weather"})


LOOKAROUND = {
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {"properties": {"q": {"type": "string", "pattern": "(?=a)b"}}},
    },
}


@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_the_grammar_cannot_hold_is_a_400_naming_tools(oai, model, stream) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        result = create(oai, model, tools=[LOOKAROUND], tool_choice="required", stream=stream)
        list(result) if stream else None
    assert err.value.status_code == 400 and err.value.body["param"] == "tools"
    assert "look-around" in err.value.body["message"]
    assert len(err.value.body["message"]) < 600
    # Not forced, the schema is never compiled: the request goes through.
    create(oai, model, tools=[LOOKAROUND], tool_choice="auto", max_tokens=4)


# The formats whose arguments are not JSON, each on a server started with its parser.
@pytest.fixture(scope="module", params=["xml", "pythonic", "qwen3_coder"])
def markup_oai(request, make_engine):
    from rlserve.server import ServerConfig
    from tests.support.servers import RunningServer

    config = ServerConfig(tool_call_parser=request.param, flush_interval_ms=1.0)
    running = RunningServer(make_engine(max_num_seqs=8), config)
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0)
    yield client, client.models.list().data[0].id
    running.close()


def test_markup_formats_named_call_arguments_match_the_schema(markup_oai) -> None:
    oai, model = markup_oai
    reply = create(
        oai, model, tool_choice=NAMED_WEATHER, n=4, temperature=1.0, seed=7, max_tokens=120
    )
    for choice in reply.choices:
        assert_valid_calls(choice, {"get_weather"})
        assert len(choice.message.tool_calls) == 1


def test_markup_formats_required_without_parallel_calls_is_one_call(markup_oai) -> None:
    oai, model = markup_oai
    schemas = {**SCHEMAS, "switch": SWITCH_SCHEMA}
    reply = create(
        oai,
        model,
        tools=[WEATHER, SWITCH],
        tool_choice="required",
        parallel_tool_calls=False,
        n=4,
        temperature=1.0,
        seed=3,
        max_tokens=120,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        arguments = json.loads(call.function.arguments)
        assert schema_problems(arguments, schemas[call.function.name]) == [], arguments
