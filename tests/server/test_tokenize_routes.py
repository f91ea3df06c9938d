"""vLLM's `/tokenize`, `/detokenize`, `/version` and `/ping` on a real server."""

from __future__ import annotations

import asyncio
from importlib import metadata

import httpx
import openai
import pytest

from rlserve.server import ServerConfig, create_app
from tests.support.servers import TEST_MODEL, RunningServer

PROMPT = "What is 12 + 30?"
MESSAGES = [{"role": "user", "content": PROMPT}]


def _post(server: RunningServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


def _tokenizer(server: RunningServer):
    return server.app.state.rlserve.tokenizer


def _chat_ids(server: RunningServer, messages: list, add_generation_prompt: bool) -> list[int]:
    tokenizer = _tokenizer(server)
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    return tokenizer.encode(text, add_special_tokens=False)


def test_tokenize_a_prompt_in_vllms_shape(server: RunningServer) -> None:
    reply = _post(server, "/tokenize", {"prompt": PROMPT})
    assert reply.status_code == 200
    expected = _tokenizer(server).encode(PROMPT)
    assert reply.json() == {
        "count": len(expected),
        "max_model_len": server.app.state.rlserve.max_model_len,
        "tokens": expected,
        "token_strs": None,
    }


def test_tokenize_returns_token_strings_and_honours_special_tokens(server) -> None:
    tokenizer = _tokenizer(server)
    for add in (True, False):
        body = {"prompt": PROMPT, "add_special_tokens": add, "return_token_strs": True}
        reply = _post(server, "/tokenize", body).json()
        assert reply["tokens"] == tokenizer.encode(PROMPT, add_special_tokens=add)
        assert reply["token_strs"] == tokenizer.convert_ids_to_tokens(reply["tokens"])
    special = tokenizer.all_special_tokens[0]
    reply = _post(server, "/tokenize", {"prompt": special + PROMPT}).json()
    assert reply["tokens"][0] == tokenizer.convert_tokens_to_ids(special)  # not split


def test_tokenize_chat_matches_what_the_chat_route_sends(server, oai, model) -> None:
    reply = _post(server, "/tokenize", {"messages": MESSAGES}).json()
    chat = oai.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=1, extra_body={"return_token_ids": True}
    )
    assert reply["tokens"] == chat.model_extra["prompt_token_ids"]
    rendered = _chat_ids(server, MESSAGES, add_generation_prompt=True)
    assert reply["tokens"] == rendered and reply["count"] == len(rendered)


def test_tokenize_chat_options(server: RunningServer) -> None:
    tokenizer = _tokenizer(server)
    body = {"messages": MESSAGES, "add_generation_prompt": False, "return_token_strs": True}
    reply = _post(server, "/tokenize", body).json()
    assert reply["tokens"] == _chat_ids(server, MESSAGES, add_generation_prompt=False)
    assert reply["token_strs"] == tokenizer.convert_ids_to_tokens(reply["tokens"])
    parts = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    with_parts = _post(server, "/tokenize", {"messages": parts}).json()
    plain = _post(server, "/tokenize", {"messages": MESSAGES}).json()
    assert with_parts["tokens"] == plain["tokens"]
    assert len(plain["tokens"]) > len(reply["tokens"])  # the generation prompt


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "prompt"),
        ({"prompt": PROMPT, "messages": MESSAGES}, "messages"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": PROMPT, "add_special_tokens": "maybe"}, "add_special_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages"),
        (
            {"messages": MESSAGES, "continue_final_message": True, "add_generation_prompt": True},
            "continue_final_message",
        ),
        ({"messages": MESSAGES, "chat_template": "{{ 1 }}"}, "chat_template"),
    ],
)
def test_tokenize_refuses_bad_input(server: RunningServer, body: dict, param: str) -> None:
    reply = _post(server, "/tokenize", body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_tokenize_and_detokenize_refuse_unknown_models_and_bad_json(server) -> None:
    for path, body in (("/tokenize", {"prompt": PROMPT}), ("/detokenize", {"tokens": [1]})):
        reply = _post(server, path, {**body, "model": "no-such-model"})
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
        raw = httpx.post(server.url + path, content=b"{not json", timeout=30)
        assert raw.status_code == 400 and "malformed JSON" in raw.json()["error"]["message"]
        listed = _post(server, path, [body])
        assert listed.status_code == 400


def test_detokenize_round_trip(server: RunningServer, model: str) -> None:
    tokens = _post(server, "/tokenize", {"prompt": PROMPT}).json()["tokens"]
    reply = _post(server, "/detokenize", {"tokens": tokens, "model": model})
    assert reply.status_code == 200 and reply.json() == {"prompt": PROMPT}
    assert _post(server, "/detokenize", {"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize(
    "tokens",
    [[1, True], [-1], ["3"], [1.5], "1 2 3", 7, None, [[1, 2]], "OUT_OF_VOCAB", [2**70]],
)
def test_detokenize_refuses_bad_ids(server: RunningServer, tokens) -> None:
    vocab = len(_tokenizer(server))
    tokens = [5, vocab] if tokens == "OUT_OF_VOCAB" else tokens
    reply = _post(server, "/detokenize", {"tokens": tokens})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "tokens" and error["type"] == "invalid_request_error"
    if tokens == [5, vocab]:
        assert f"tokens[1]: Token id {vocab} is out of vocabulary" in error["message"]
    assert _post(server, "/detokenize", {}).status_code == 400


def test_version_and_ping(server: RunningServer) -> None:
    version = httpx.get(server.url + "/version")
    assert version.status_code == 200
    assert version.json() == {"version": metadata.version("rlserve")}
    for method in ("GET", "POST"):
        ping = httpx.request(method, server.url + "/ping")
        assert ping.status_code == 200 and ping.content == b""
    assert httpx.put(server.url + "/ping").status_code == 405


def _call(app, method: str, path: str, **kwargs) -> httpx.Response:
    """One request to `app` without its lifespan: the engine thread never starts."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def keyed_app(make_engine):
    """An app with an API key whose engine thread is not running."""
    return create_app(make_engine(TEST_MODEL), ServerConfig(api_key="inference-key"))


def test_tokenizer_routes_need_the_api_key(keyed_app) -> None:
    auth = {"Authorization": "Bearer inference-key"}
    for path, body in (("/tokenize", {"prompt": PROMPT}), ("/detokenize", {"tokens": [1, 2]})):
        refused = _call(keyed_app, "POST", path, json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        assert _call(keyed_app, "POST", path, json=body, headers=auth).status_code == 200
    assert _call(keyed_app, "GET", "/version").status_code == 200  # open, as /health is


def test_ping_is_503_while_the_engine_is_not_running(keyed_app) -> None:
    assert _call(keyed_app, "GET", "/ping").status_code == 503
    assert _call(keyed_app, "POST", "/ping").status_code == 503


def test_the_openai_sdk_can_call_tokenize(server: RunningServer, oai: openai.OpenAI) -> None:
    """What clients built on the SDK do: `client.post` on the server's root path."""
    root = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    reply = root.post("/tokenize", body={"prompt": PROMPT}, cast_to=object)
    assert reply["tokens"] == _tokenizer(server).encode(PROMPT)
