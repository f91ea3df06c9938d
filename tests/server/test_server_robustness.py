"""Bad input, disconnects, overload, auth and 200 concurrent clients on a real server."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from rlserve.client import APIStatusError, AsyncClient
from rlserve.server import ServerConfig
from tests.support.servers import TEST_MODEL, RunningServer, shared_server, wait_until

AUTH = {"Authorization": "Bearer sk-test"}
# Long enough that a disconnect always lands mid-generation, however fast the machine.
LONG = {"max_tokens": 1000, "ignore_eos": True, "temperature": 1.0}


@pytest.fixture(scope="module")
def small_server(make_engine, pytestconfig) -> RunningServer:
    """Two batch slots, a queue of four, long generations allowed and an API key."""

    def make() -> RunningServer:
        config = ServerConfig(max_batch=2, max_queue=4, max_tokens=1000, api_key="sk-test")
        return RunningServer(make_engine(TEST_MODEL, max_num_seqs=2), config)

    return shared_server("small", make, pytestconfig)


BAD_REQUESTS = [
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": ', 400, "malformed JSON"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "n": [2]}, 400, "n"),
    ("/v1/completions", {"prompt": {"a": 1}}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -3}, 400, "max_tokens must be >= 1"),
    ("/v1/completions", {"prompt": "hi", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 65}, 400, "--max-tokens"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 99}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": [10**9]}, 400, "vocabulary"),
    ("/v1/completions", {"prompt": "hi " * 3000}, 400, "context"),
    ("/v1/completions", {"prompt": ["hi", "hi " * 3000]}, 400, "context"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-9"}, 404, "gpt-9"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "role"),
    ("/generate", {"max_tokens": 4}, 400, "prompt or input_ids"),
    ("/generate", {"prompt": "hi", "step_id": "x"}, 400, "step_id"),
    ("/v1/nowhere", {}, 404, "Not Found"),
]


@pytest.mark.parametrize(("path", "body", "status", "needle"), BAD_REQUESTS)
def test_bad_input_gets_4xx_naming_the_problem(
    server: RunningServer, path: str, body: object, status: int, needle: str
) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = httpx.post(server.url + path, timeout=30, **kwargs)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert needle in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    ok = httpx.post(server.url + "/generate", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200


def test_openai_package_sees_typed_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oai.completions.create(model="rlserve-tiny", prompt="x", temperature=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def _generated(server: RunningServer) -> int:
    return int(server.app.state.rlserve.loop.stats()["generated_tokens"])


def test_disconnect_mid_stream_frees_blocks(small_server: RunningServer) -> None:
    before = _generated(small_server)
    body = {"prompt": "count:", "n": 2, "stream": True, **LONG}
    url = small_server.url + "/v1/completions"
    with httpx.stream("POST", url, json=body, headers=AUTH, timeout=30) as resp:
        assert resp.status_code == 200
        assert next(line for line in resp.iter_lines() if line.startswith("data:"))
    assert wait_until(small_server.idle, 10)
    assert _generated(small_server) - before < 2 * 500  # aborted, not run to the end


def test_disconnect_while_waiting_for_json_frees_blocks(small_server: RunningServer) -> None:
    before = _generated(small_server)
    body = {"prompt": "count:", "n": 2, **LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(small_server.url + "/generate", json=body, headers=AUTH, timeout=0.3)
    assert wait_until(small_server.idle, 10)
    assert _generated(small_server) - before < 2 * 500


def test_200_concurrent_requests_each_answered_once(server: RunningServer) -> None:
    tokenizer = server.app.state.rlserve.tokenizer

    async def run() -> list[dict]:
        async with AsyncClient(server.url, max_retries=3, initial_backoff=0.05) as client:
            calls = [
                client.generate_rl(f"What is {i} + 1?", max_tokens=4, request_id=f"req-{i}")
                for i in range(200)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    assert sorted(r["request_id"] for r in responses) == sorted(f"req-{i}" for i in range(200))
    for i, resp in enumerate(responses):
        assert resp["request_id"] == f"req-{i}"
        assert resp["prompt_ids"] == tokenizer.encode(f"What is {i} + 1?")
        assert 1 <= len(resp["completion_ids"]) <= 4
    assert max(r["metadata"]["batch_size"] for r in responses) > 1


def test_overload_is_refused_with_429_not_hung(small_server: RunningServer) -> None:
    async def run() -> list[object]:
        async with AsyncClient(small_server.url, api_key="sk-test", max_retries=0) as client:
            calls = [
                client.generate_rl("count:", max_tokens=100, ignore_eos=True) for _ in range(24)
            ]
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)

    outcomes = asyncio.run(run())
    refused = [o for o in outcomes if isinstance(o, APIStatusError)]
    served = [o for o in outcomes if isinstance(o, dict)]
    assert len(refused) + len(served) == 24
    assert refused and served
    assert all(e.status_code == 429 and "overloaded" in e.message for e in refused)
    assert wait_until(small_server.idle, 10)


def test_api_key_is_required(small_server: RunningServer) -> None:
    url = small_server.url
    denied = httpx.post(url + "/generate", json={"prompt": "x", "max_tokens": 1})
    assert denied.status_code == 401 and "API key" in denied.json()["error"]["message"]
    wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    allowed = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sk-test"})
    assert allowed.status_code == 200
    assert httpx.get(url + "/health").status_code == 200  # health stays open
