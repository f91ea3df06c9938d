"""Tool-call replies through the real server (bundled model, hermes parser) as agents get
them: the rlserve client's training defaults and the `openai` SDK, whole and streamed."""

from __future__ import annotations

import openai
import pytest

from rlserve.client import TRAIN_KEY, Client
from tests.support.calculator import CALCULATOR

ASK = [{"role": "user", "content": "What is 4821 * 37?"}]  # the model answers with a call
KEEP_SPECIAL = {"skip_special_tokens": False, "include_stop_str_in_output": True}


def test_call_only_reply_has_null_content_with_the_training_defaults(server) -> None:
    with Client(server.url, max_retries=0) as client:
        reply = client.generate(ASK, tools=[CALCULATOR], max_tokens=48, temperature=0)
    (choice,) = reply["choices"]
    assert choice["message"]["content"] is None  # was "<|im_end|>"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "calculator"
    assert choice["finish_reason"] == "tool_calls"
    # Only the message text changes: the training tokens still include the end token.
    assert reply[TRAIN_KEY]["response_tokens"] == choice["token_ids"]
    assert len(choice["token_ids"]) == len(choice["logprobs"]["content"])


def test_call_only_reply_streams_no_content(oai: openai.OpenAI, model: str) -> None:
    kw = {
        "model": model,
        "messages": ASK,
        "tools": [CALCULATOR],
        "max_tokens": 48,
        "temperature": 0,
        "extra_body": KEEP_SPECIAL,
    }
    whole = oai.chat.completions.create(**kw).choices[0]
    assert whole.message.content is None and whole.message.tool_calls
    chunks = [c for c in oai.chat.completions.create(**kw, stream=True) if c.choices]
    contents = [c.choices[0].delta.content for c in chunks]
    assert not any(contents), contents  # no "<|im_end|>" delta at the end
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [t.function.name for t in calls] == ["calculator"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "tools",
    [
        [{"type": "function", "function": {}}],
        [CALCULATOR, {"type": "function", "function": {"name": 7}}],
        [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_without_a_usable_name_are_a_400_before_generating(
    oai: openai.OpenAI, model: str, tools: list, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        result = oai.chat.completions.create(
            model=model, messages=ASK, tools=tools, max_tokens=8, stream=stream
        )
        list(result) if stream else None
    assert err.value.status_code == 400
    assert err.value.body["param"] == "tools" and "tools[" in err.value.body["message"]
