"""Structured outputs over HTTP: OpenAI's `response_format` (the real `openai` SDK, its
`parse` helper with a pydantic model), vLLM's `structured_outputs` and `guided_*` bodies,
and the 400s for bad constraints."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import openai
import pydantic
import pytest

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "unit": {"enum": ["cm", "m", "km"]}},
    "required": ["ok", "unit"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "What is 12 + 30?"}]
# The tiny model loves whitespace, which JSON allows anywhere (vLLM's default): these turn
# it off, in vLLM's way (its structured_outputs options apply to response_format too).
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}


class Answer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    ok: bool
    unit: Literal["cm", "m", "km"]


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def _error(resp: httpx.Response) -> dict:
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


def test_response_format_json_schema_with_the_sdk(oai, model):
    reply = oai.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=60,
        seed=1,
        n=2,
        extra_body=COMPACT,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
        },
    )
    for choice in reply.choices:
        value = json.loads(choice.message.content)
        assert set(value) == {"ok", "unit"} and choice.finish_reason == "stop"


def test_sdk_parse_with_a_pydantic_model(oai, model):
    reply = oai.beta.chat.completions.parse(
        model=model,
        messages=MESSAGES,
        max_tokens=60,
        seed=2,
        response_format=Answer,
        extra_body=COMPACT,
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Answer)


def test_response_format_json_object(oai, model):
    reply = oai.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=40,
        seed=3,
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].message.content.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"structured_outputs": {"choice": ["yes", "no"]}}, lambda t: t in ("yes", "no")),
        ({"structured_outputs": {"regex": "[0-9]{3}"}}, lambda t: re.fullmatch("[0-9]{3}", t)),
        ({"guided_choice": ["red", "blue"]}, lambda t: t in ("red", "blue")),
        ({"guided_regex": "[a-c]{4}"}, lambda t: re.fullmatch("[a-c]{4}", t)),
        ({"guided_json": SCHEMA, **COMPACT}, lambda t: set(json.loads(t)) == {"ok", "unit"}),
        ({"guided_grammar": 'root ::= "ab" | "cd"'}, lambda t: t in ("ab", "cd")),
    ],
)
def test_vllm_bodies_on_both_endpoints(server, model, extra, check):
    chat = {"model": model, "messages": MESSAGES, "max_tokens": 60, "seed": 4, **extra}
    text = _post(server, "/v1/chat/completions", chat).json()["choices"][0]["message"]["content"]
    assert check(text), text
    completion = {"model": model, "prompt": "Answer:", "max_tokens": 60, "seed": 4, **extra}
    text = _post(server, "/v1/completions", completion).json()["choices"][0]["text"]
    assert check(text), text


def test_the_sdk_passes_vllm_fields_in_extra_body(oai, model):
    reply = oai.completions.create(
        model=model,
        prompt="Pick:",
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["left", "right"]}},
    )
    assert reply.choices[0].text in ("left", "right")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "nope"}},
                }
            },
            "response_format",
        ),  # noqa: E501
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
            "response_format",
        ),  # noqa: E501
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"guided_regex": "a(b"}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"structured_outputs": {"grammar": "root ::= missing"}}, "structured_outputs"),
        ({"structured_outputs": {"json": SCHEMA, "regex": "a"}}, "structured_outputs"),
        ({"guided_json": SCHEMA, "guided_regex": "a"}, "guided_regex"),
        ({"structured_outputs": {"structural_tag": {"a": 1}}}, "structured_outputs"),
        ({"structured_outputs": {"disable_any_whitespace": True}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "disable_any_whitespace": 1}}, "structured_outputs"),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(server, model, extra, param):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 5, **extra}
    assert _error(_post(server, "/v1/chat/completions", body))["param"] == param


def test_sdk_raises_bad_request_for_an_invalid_schema(oai, model):
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=5,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object", "required": 3}},
            },
        )
