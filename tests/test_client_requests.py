"""What the clients send and how they parse answers, against a real tiny HTTP server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import rlserve
from rlserve.client import (
    TRAIN_KEY,
    TRAINING_EXTRA_BODY,
    APIStatusError,
    AsyncClient,
    Client,
    WeightSyncController,
)
from rlserve.client.flows import decoded
from rlserve.client.payloads import PreparedCall
from tests.support.fake_http import FakeHTTPServer, Recorded

ASSETS = str(Path(rlserve.__file__).parent / "assets")  # the bundled model's tokenizer
COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "choices": [
        {
            "index": 0,
            "text": "ab",
            "finish_reason": "length",
            "logprobs": {"tokens": ["token_id:5", "token_id:6"], "token_logprobs": [-1.0, -2.0]},
        }
    ],
}
CHAT = {
    "object": "chat.completion",
    "prompt_token_ids": [1, 2],
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ok"},
            "token_ids": [9],
            "finish_reason": "stop",
            "logprobs": {"content": [{"token": "token_id:9", "logprob": -0.5}]},
        }
    ],
}
SSE = (
    'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'
    ": keep-alive comment\n\n"
    'data: {"choices": [{"index": 0, "text": "b"}]}\n\n'
    "data: [DONE]\n\n"
)


def _handler(req: Recorded, n: int):
    if req.path == "/v1/models":
        return 200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]}, {}
    if req.path == "/v1/completions":
        return 200, (SSE if req.body.get("stream") else COMPLETION), {}
    if req.path == "/v1/chat/completions":
        return 200, CHAT, {}
    if req.path == "/generate":
        return 200, {"prompt_ids": [1], "completion_ids": [2], "logprobs": [-0.1]}, {}
    if req.path == "/metrics":
        if "text/plain" in req.headers.get("Accept", ""):
            return 200, "rlserve_x 1\n", {"content-type": "text/plain"}
        return 200, {"queue_depth": 0}, {}
    return 404, {"error": {"message": f"no route {req.path}", "type": "NotFound"}}, {}


@pytest.fixture
def fake():
    server = FakeHTTPServer(_handler)
    yield server
    server.close()


def test_completion_sends_training_fields_and_resolves_model(fake: FakeHTTPServer) -> None:
    with Client(fake.url + "/v1/", api_key="sk-test") as client:
        resp = client.completion("hi", max_tokens=2, temperature=0.5)
    models_req, comp_req = fake.requests
    assert models_req.path == "/v1/models"
    assert comp_req.headers["Authorization"] == "Bearer sk-test"
    body = comp_req.body
    assert body["model"] == "tiny" and body["prompt"] == "hi" and body["logprobs"] == 1
    assert body["max_tokens"] == 2 and body["temperature"] == 0.5
    for key, value in TRAINING_EXTRA_BODY.items():
        assert body[key] == value
    assert resp[TRAIN_KEY]["response_tokens"] == [5, 6]
    assert resp[TRAIN_KEY]["response_logprobs"] == [-1.0, -2.0]


def test_openai_style_create_passes_through(fake: FakeHTTPServer) -> None:
    with Client(fake.url, model="m") as client:
        resp = client.chat.completions.create(
            messages=[{"role": "user", "content": "x"}],
            max_tokens=3,
            extra_body={"top_k": 5},
            extra_headers={"X-Trace": "1"},
        )
        client.completions.create(model="other", prompt=[1, 2, 3])
    chat_req, comp_req = fake.requests
    assert chat_req.body == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 3,
        "top_k": 5,
        "return_token_ids": True,
    }
    assert chat_req.headers["X-Trace"] == "1"
    assert comp_req.body["model"] == "other" and "logprobs" not in comp_req.body
    assert resp[TRAIN_KEY] == {
        "prompt_tokens": [1, 2],
        "response_tokens": [9],
        "response_logprobs": [-0.5],
        "finish_reason": "stop",
        "samples": resp[TRAIN_KEY]["samples"],
    }


def test_generate_rl_and_metrics(fake: FakeHTTPServer) -> None:
    with Client(fake.url) as client:
        resp = client.generate_rl(input_ids=[1], policy_version=3, step_id=7)
        assert client.metrics() == {"queue_depth": 0}
        assert client.metrics(prometheus=True) == "rlserve_x 1\n"
    assert fake.requests[0].body == {"input_ids": [1], "policy_version": 3, "step_id": 7}
    assert resp[TRAIN_KEY]["response_tokens"] == [2]


def test_streaming_sync_and_async(fake: FakeHTTPServer) -> None:
    with Client(fake.url, model="m") as client:
        stream = client.completions.create(prompt="x", stream=True)
        texts = [c["choices"][0]["text"] for c in stream]
    assert texts == ["a", "b"]

    async def go() -> list[str]:
        async with AsyncClient(fake.url, model="m") as client:
            stream = await client.completions.create(prompt="x", stream=True)
            return [c["choices"][0]["text"] async for c in stream]

    assert asyncio.run(go()) == ["a", "b"]


def test_async_chat_generate(fake: FakeHTTPServer) -> None:
    async def go() -> dict:
        async with AsyncClient(fake.url, model="m") as client:
            return await client.generate([{"role": "user", "content": "x"}])

    resp = asyncio.run(go())
    assert fake.requests[0].body["logprobs"] is True
    assert resp[TRAIN_KEY]["response_tokens"] == [9]


def test_error_json_is_parsed(fake: FakeHTTPServer) -> None:
    with Client(fake.url, max_retries=0) as client, pytest.raises(APIStatusError) as err:
        client._run(decoded(client, PreparedCall("/x", {})))
    assert err.value.status_code == 404 and err.value.message == "no route /x"


# The torch-free base modules the client may share with the server (plain-Python rules).
CLIENT_MAY_IMPORT = (
    "rlserve._checks",
    "rlserve.chat_messages",
    "rlserve.pause_mode",
    "rlserve.sampling_params",
)


def test_import_does_not_pull_torch_or_rest_of_rlserve() -> None:
    code = (
        "import sys, json, rlserve.client; "
        "mods = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'transformers'))"
        " or (m.startswith('rlserve.') and not m.startswith('rlserve.client')"
        f" and m not in {CLIENT_MAY_IMPORT!r})]; "
        "print(json.dumps(mods))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_calls_wait_for_a_weight_sync(fake: FakeHTTPServer) -> None:
    controller = WeightSyncController()
    controller.begin_sync("policy")
    client = Client(fake.url, model="m", weight_sync=controller, model_tag="policy")
    worker = threading.Thread(target=client.generate_rl, args=("hi",), daemon=True)
    worker.start()
    try:
        time.sleep(0.2)
        assert fake.requests == []  # frozen while the sync runs
        client.metrics()  # health, metrics and models are not inference: never frozen
    finally:  # a failure above must not leave the worker frozen forever
        controller.end_sync("policy", version=4)
    worker.join(timeout=10)
    assert [r.path for r in fake.requests] == ["/metrics", "/generate"]

    async def go() -> None:
        async with AsyncClient(fake.url, model="m") as aclient:
            aclient.set_weight_sync_controller(controller, "policy")
            with controller.syncing("policy"):
                task = asyncio.create_task(aclient.completion("x"))
                await asyncio.sleep(0.1)
                assert len(fake.requests) == 2
            await task

    asyncio.run(go())
    assert fake.requests[-1].path == "/v1/completions"
    client.close()


def _no_prompt_ids(req: Recorded, n: int):
    """A server that returns generated ids but no prompt ids (e.g. older vLLM, OpenAI)."""
    if req.path == "/v1/chat/completions":
        return 200, {k: v for k, v in CHAT.items() if k != "prompt_token_ids"}, {}
    n_prompts = len(req.body["prompt"]) if isinstance(req.body["prompt"], list) else 1
    choices = [dict(COMPLETION["choices"][0], index=i) for i in range(n_prompts)]
    return 200, {**COMPLETION, "choices": choices}, {}


def test_text_prompts_are_tokenised_by_the_client_when_the_server_returns_no_ids() -> None:
    from rlserve.client import hf_tokenizer

    tok = hf_tokenizer(ASSETS)
    server = FakeHTTPServer(_no_prompt_ids)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    try:
        with Client(server.url, model="m", tokenizer=ASSETS) as client:
            one = client.completion("What is 2 + 3?")[TRAIN_KEY]
            two = client.completion(["a b", "c"])[TRAIN_KEY]
            chat = client.generate(messages)[TRAIN_KEY]
        with Client(server.url, model="m") as no_tokenizer:  # nothing to build them from
            assert no_tokenizer.completion("hi")[TRAIN_KEY]["prompt_tokens"] is None

        async def go() -> dict:
            async with AsyncClient(server.url, model="m", tokenizer=tok) as aclient:
                return (await aclient.completion("c"))[TRAIN_KEY]

        async_one = asyncio.run(go())
    finally:
        server.close()
    assert one["prompt_tokens"] == tok.encode("What is 2 + 3?") and one["prompt_tokens"]
    assert [s["prompt_tokens"] for s in two["samples"]] == [tok.encode("a b"), tok.encode("c")]
    assert async_one["prompt_tokens"] == tok.encode("c")
    expected = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    assert chat["prompt_tokens"] == list(expected) and chat["response_tokens"] == [9]


class SpyTokenizer:
    """A spy around a real tokenizer: records the thread each encode/render runs on."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.threads: list[int] = []

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.get_ident())
        return self._tokenizer.encode(*args, **kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.get_ident())
        return self._tokenizer.apply_chat_template(*args, **kwargs)


def test_async_client_tokenises_off_the_event_loop() -> None:
    from rlserve.client import hf_tokenizer

    spy = SpyTokenizer(hf_tokenizer(ASSETS))
    server = FakeHTTPServer(_no_prompt_ids)

    async def go() -> tuple[int, dict, dict]:
        async with AsyncClient(server.url, model="m", tokenizer=spy) as aclient:
            completion = (await aclient.completion("What is 2 + 3?"))[TRAIN_KEY]
            chat = (await aclient.generate([{"role": "user", "content": "hi"}]))[TRAIN_KEY]
        return threading.get_ident(), completion, chat

    try:
        loop_thread, completion, chat = asyncio.run(go())
    finally:
        server.close()
    assert completion["prompt_tokens"] and chat["prompt_tokens"]
    assert len(spy.threads) == 2 and loop_thread not in spy.threads


def test_async_client_loads_a_named_tokenizer_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker threads tokenise concurrently: the first use loads the tokenizer once."""
    from rlserve.client import base, hf_tokenizer

    loads: list[str] = []

    def slow_load(name: str) -> Any:
        loads.append(name)
        time.sleep(0.2)  # fault injection: widen the window in which loads could overlap
        return hf_tokenizer(name)

    monkeypatch.setattr(base, "hf_tokenizer", slow_load)
    server = FakeHTTPServer(_no_prompt_ids)

    async def go() -> list[dict]:
        async with AsyncClient(server.url, model="m", tokenizer=ASSETS) as aclient:
            replies = await asyncio.gather(*(aclient.completion("c") for _ in range(6)))
        return [r[TRAIN_KEY] for r in replies]

    try:
        trains = asyncio.run(go())
    finally:
        server.close()
    assert loads == [ASSETS]
    assert all(t["prompt_tokens"] == trains[0]["prompt_tokens"] for t in trains)


# A template that renders content as given: a list of parts would show as a Python list.
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if enable_thinking is defined %}<think>{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PARTS = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 3?"}]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"add_generation_prompt": False},
        {"continue_final_message": True},
        {"chat_template_kwargs": {"enable_thinking": False}},
        {"chat_template": "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"},
    ],
)
def test_client_chat_prompt_ids_match_the_server(extra: dict[str, Any]) -> None:
    """The client's fallback renders a chat as rlserve's server does: text parts joined
    into one string, the same template options."""
    from types import SimpleNamespace

    from rlserve.client import hf_tokenizer
    from rlserve.server.chat_format import render_prompt
    from rlserve.server.protocol import ChatCompletionRequest

    tokenizer = hf_tokenizer(ASSETS)
    tokenizer.chat_template = PLAIN_TEMPLATE
    messages = [{"role": "user", "content": PARTS}, {"role": "assistant", "content": PARTS}]
    state = SimpleNamespace(
        tokenizer=tokenizer,
        max_model_len=4096,
        config=SimpleNamespace(trust_request_chat_template=True),
    )
    request = ChatCompletionRequest(model="m", messages=messages, **extra)
    _, server_ids = asyncio.run(render_prompt(state, request))  # type: ignore[arg-type]
    server = FakeHTTPServer(_no_prompt_ids)
    try:
        with Client(server.url, model="m", tokenizer=tokenizer) as client:
            train = client.generate(messages, **extra)[TRAIN_KEY]
    finally:
        server.close()
    assert train["prompt_tokens"] == server_ids
    assert "What is 2 + 3?" in tokenizer.decode(server_ids)  # the parts, joined


def test_client_leaves_prompt_ids_of_non_text_parts_unset() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    server = FakeHTTPServer(_no_prompt_ids)
    try:
        with Client(server.url, model="m", tokenizer=ASSETS) as client:
            reply = client.generate([{"role": "user", "content": [image]}])
    finally:
        server.close()
    assert reply[TRAIN_KEY]["prompt_tokens"] is None and reply[TRAIN_KEY]["response_tokens"]
