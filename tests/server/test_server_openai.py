"""The OpenAI-compatible routes, driven by the official `openai` package against a real
server (uvicorn on a loopback port, bundled model)."""

from __future__ import annotations

import openai
import pytest

from rlserve.client import TRAIN_KEY, Client
from tests.support.servers import RunningServer

PROMPT = "What is 2 + 3?"
CHAT = [{"role": "user", "content": "What is 2 + 3?"}]


def test_models_lists_the_served_model(oai: openai.OpenAI, model: str) -> None:
    models = oai.models.list().data
    assert len(models) == 1 and models[0].owned_by == "rlserve"
    assert oai.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_completion_stream_reassembles_to_greedy_text(oai: openai.OpenAI, model: str) -> None:
    kw = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    full = oai.completions.create(**kw)
    chunks = list(oai.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens


def test_chat_stream_reassembles_to_greedy_text(oai: openai.OpenAI, model: str) -> None:
    kw = {"model": model, "messages": CHAT, "max_tokens": 12, "temperature": 0}
    full = oai.chat.completions.create(**kw)
    chunks = list(oai.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens >= 1


def test_n_samples_are_indexed_and_seeded(oai: openai.OpenAI, model: str) -> None:
    kw = {"model": model, "prompt": PROMPT, "n": 3, "max_tokens": 6, "temperature": 1.0}
    first = oai.completions.create(**kw, seed=5)
    again = oai.completions.create(**kw, seed=5)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    chat = oai.chat.completions.create(model=model, messages=CHAT, n=2, max_tokens=4, seed=1)
    assert [c.index for c in chat.choices] == [0, 1]


def test_completion_logprobs_shape(oai: openai.OpenAI, model: str, server) -> None:
    extra = {"return_token_ids": True, "return_tokens_as_token_ids": True}
    resp = oai.completions.create(
        model=model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2, extra_body=extra
    )
    choice = resp.choices[0]
    token_ids = choice.model_extra["token_ids"]
    versions = choice.model_extra["weight_versions"]
    assert versions == [server.engine.policy_version] * len(token_ids)
    lp = choice.logprobs
    assert lp.tokens == [f"token_id:{t}" for t in token_ids]
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(token_ids)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and top[token] == logprob
        assert 2 <= len(top) <= 3
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the top token


def test_chat_logprobs_shape(oai: openai.OpenAI, model: str) -> None:
    resp = oai.chat.completions.create(
        model=model, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.bytes == list(entry.token.encode())
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_token_id_prompts(oai: openai.OpenAI, model: str, server: RunningServer) -> None:
    ids = server.app.state.rlserve.tokenizer.encode(PROMPT)
    kw = {"model": model, "max_tokens": 8, "temperature": 0}
    by_text = oai.completions.create(prompt=PROMPT, **kw)
    by_ids = oai.completions.create(prompt=ids, **kw)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)
    batch = oai.completions.create(prompt=[ids, ids[:3]], **kw)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == by_text.choices[0].text


def test_echo_with_prompt_logprobs(oai: openai.OpenAI, model: str, server: RunningServer) -> None:
    n_prompt = len(server.app.state.rlserve.tokenizer.encode(PROMPT))
    resp = oai.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=4,
        temperature=0,
        echo=True,
        logprobs=1,
        extra_body={"prompt_logprobs": 1},
    )
    choice = resp.choices[0]
    assert choice.text.startswith(PROMPT)
    assert len(choice.logprobs.tokens) == n_prompt + resp.usage.completion_tokens
    assert choice.logprobs.token_logprobs[0] is None
    prompt_logprobs = choice.model_extra["prompt_logprobs"]
    assert prompt_logprobs[0] is None and len(prompt_logprobs) == n_prompt
    assert all(entry for entry in prompt_logprobs[1:])


def test_vllm_sampling_extras(oai: openai.OpenAI, model: str) -> None:
    extra = {"ignore_eos": True, "min_tokens": 6, "top_k": 5, "min_p": 0.01}
    resp = oai.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0.8, seed=3, extra_body=extra
    )
    assert resp.usage.completion_tokens == 6 and resp.choices[0].finish_reason == "length"


def test_rlserve_client_streams(server: RunningServer) -> None:
    with Client(server.url) as client:
        kw = {"messages": CHAT, "max_tokens": 8, "temperature": 0}
        full = client.chat.completions.create(**kw)
        chunks = list(client.chat.completions.create(**kw, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    assert chunks[0]["prompt_token_ids"] == full["prompt_token_ids"]  # create() asks for ids


def test_client_training_data_from_rlserve(server: RunningServer) -> None:
    tokenizer = server.app.state.rlserve.tokenizer
    with Client(server.url) as client:
        comp = client.completion(PROMPT, max_tokens=6, temperature=0)
        chat = client.generate(CHAT, max_tokens=6, temperature=0)
    train = comp[TRAIN_KEY]
    assert train["prompt_tokens"] == tokenizer.encode(PROMPT)
    assert train["response_tokens"] == comp["choices"][0]["token_ids"]
    assert len(train["response_logprobs"]) == len(train["response_tokens"]) >= 1
    tokens_in_logprobs = comp["choices"][0]["logprobs"]["tokens"]
    assert tokens_in_logprobs == [f"token_id:{t}" for t in train["response_tokens"]]
    chat_train = chat[TRAIN_KEY]
    assert chat_train["prompt_tokens"] == chat["prompt_token_ids"]
    assert len(chat_train["response_logprobs"]) == len(chat_train["response_tokens"]) >= 1


CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


def test_tool_calls_parsed_whole_and_streamed(oai: openai.OpenAI, model: str) -> None:
    kw = {
        "model": model,
        "messages": [{"role": "user", "content": "What is 4821 * 37?"}],
        "tools": [CALCULATOR],
        "max_tokens": 48,
        "temperature": 0,
    }
    raw = oai.chat.completions.create(**kw, tool_choice="none").choices[0]
    assert raw.message.content.startswith("<tool_call>") and raw.finish_reason == "stop"
    choice = oai.chat.completions.create(**kw).choices[0]
    (call,) = choice.message.tool_calls
    assert call.function.name == "calculator" and "expression" in call.function.arguments
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    chunks = [c for c in oai.chat.completions.create(**kw, stream=True) if c.choices]
    streamed = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [(t.function.name, t.function.arguments) for t in streamed] == [
        (call.function.name, call.function.arguments)
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_required_and_named_force_a_call(oai: openai.OpenAI, model: str) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    kw = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 12 + 30?"},
        ],
        "max_tokens": 40,
        "temperature": 0,
    }
    auto = oai.chat.completions.create(**kw, tools=[CALCULATOR]).choices[0]
    assert auto.message.tool_calls is None and "42" in auto.message.content  # answers directly
    named = {"type": "function", "function": {"name": "calculator"}}
    for tools, choice in (([CALCULATOR], "required"), ([weather, CALCULATOR], named)):
        forced = oai.chat.completions.create(**kw, tools=tools, tool_choice=choice).choices[0]
        (call,) = forced.message.tool_calls
        assert call.function.name == "calculator"
        assert call.function.arguments == '{"expression": "12 + 30"}'
        assert forced.finish_reason == "tool_calls"
    chunks = [
        c
        for c in oai.chat.completions.create(
            **kw, tools=[CALCULATOR], tool_choice="required", stream=True
        )
        if c.choices
    ]
    streamed = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [t.function.name for t in streamed] == ["calculator"]


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([CALCULATOR], {"type": "function", "function": {"name": "nope"}}, "not among the tools"),
        (None, "required", "no tools"),
        ([CALCULATOR], "sometimes", "tool_choice must be"),
        ([CALCULATOR], {"type": "function"}, "named tool_choice"),
    ],
)
def test_bad_tool_choice_is_a_400(oai: openai.OpenAI, model: str, tools, choice, message) -> None:
    kw = {"tools": tools} if tools else {}
    with pytest.raises(openai.BadRequestError, match=message):
        oai.chat.completions.create(
            model=model, messages=CHAT, max_tokens=4, tool_choice=choice, **kw
        )
