"""Issue 10 defect 3 over HTTP: a bad request next to good ones on a real server gets its
own error (400 when it is refused, a per-request error when it fails inside the engine),
and the good requests sharing its batch finish untouched."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from rlserve.server import ServerConfig
from tests.support.servers import TEST_MODEL, RunningServer, shared_server

GOOD = {"max_tokens": 64, "ignore_eos": True, "temperature": 0}
MARK = "@@corrupt-after-admission@@"


@pytest.fixture(scope="module")
def server(make_engine, pytestconfig) -> RunningServer:
    def make() -> RunningServer:
        engine = make_engine(TEST_MODEL, max_num_seqs=16)
        _corrupt_marked_requests(engine)
        config = ServerConfig(max_tokens=64, max_batch=16, flush_interval_ms=5.0)
        return RunningServer(engine, config)

    return shared_server("blast-radius", make, pytestconfig)


def _corrupt_marked_requests(engine: Any) -> None:
    """Fault injection (a wrapper, not a mock: the real engine runs the corrupt request).
    A request with the stop string MARK gets, after it passed admission, a stop token id
    outside the vocabulary: the stand-in for an input a future validation gap lets through.
    With min_tokens it is banned at every step, so sampling that request raises."""
    real = engine.add_request

    def add_request(prompt: Any, params: Any = None, request_id: Any = None, **kw: Any) -> str:
        request_id = real(prompt, params, request_id, **kw)
        if params is not None and MARK in params.stop:
            params.stop_token_ids.append(10**9)
        return request_id

    engine.add_request = add_request


async def _beside_good_ones(
    server: RunningServer, path: str, bad_body: dict
) -> tuple[httpx.Response, bool, list[httpx.Response]]:
    """Start three long good requests, send `bad_body` while they run, and return (bad
    response, whether the goods were still running when it came back, good responses)."""
    loop = server.app.state.rlserve.loop
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        goods = [
            asyncio.create_task(http.post("/generate", json={**GOOD, "prompt": f"{i} + 2 ="}))
            for i in range(3)
        ]
        for _ in range(1000):
            if loop.stats()["num_running"] >= 3:
                break
            await asyncio.sleep(0.01)
        bad = await http.post(path, json=bad_body)
        overlapped = not all(task.done() for task in goods)
        return bad, overlapped, [await task for task in goods]


def _assert_goods_untouched(goods: list[httpx.Response]) -> None:
    for resp in goods:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["completion_ids"]) == 64
        assert body["finish_reason"] == "length"


REFUSED = [
    (
        "/v1/completions",
        {"prompt": "hi", "stop_token_ids": [10**9], "min_tokens": 2},
        "stop_token_ids",
    ),
    (
        "/generate",
        {"prompt": "hi", "stop_token_ids": [653, 10**6], "min_tokens": 1},
        "stop_token_ids",
    ),
]


@pytest.mark.parametrize(("path", "bad", "needle"), REFUSED)
def test_refused_request_gets_400_and_the_batch_goes_on(
    server: RunningServer, path: str, bad: dict, needle: str
) -> None:
    resp, overlapped, goods = asyncio.run(_beside_good_ones(server, path, bad))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    assert overlapped, "the good requests finished before the bad one arrived"
    _assert_goods_untouched(goods)


def test_tiny_temperature_is_greedy_and_the_batch_goes_on(server: RunningServer) -> None:
    body = {"prompt": "1 + 1 =", "max_tokens": 4, "ignore_eos": True, "temperature": 1e-40}
    resp, _, goods = asyncio.run(_beside_good_ones(server, "/generate", body))
    assert resp.status_code == 200, resp.text
    greedy = httpx.post(server.url + "/generate", json={**body, "temperature": 0}, timeout=60)
    assert resp.json()["completion_ids"] == greedy.json()["completion_ids"]
    assert resp.json()["metadata"]["batch_size"] >= 4  # it shared steps with the goods
    _assert_goods_untouched(goods)


def test_request_failing_inside_the_engine_fails_alone(server: RunningServer) -> None:
    body = {"prompt": "hi", "max_tokens": 4, "min_tokens": 2, "stop": [MARK]}
    resp, _, goods = asyncio.run(_beside_good_ones(server, "/generate", body))
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "request failed in the engine" in error["message"] and "IndexError" in error["message"]
    _assert_goods_untouched(goods)
    assert max(g.json()["metadata"]["batch_size"] for g in goods) >= 4  # same steps


def test_streamed_request_failing_inside_the_engine_ends_with_an_error_event(
    server: RunningServer,
) -> None:
    body = {"prompt": "hi", "max_tokens": 4, "min_tokens": 2, "stop": [MARK], "stream": True}
    resp, _, goods = asyncio.run(_beside_good_ones(server, "/v1/completions", body))
    events = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    assert "request failed in the engine" in json.loads(events[-2])["error"]["message"]
    _assert_goods_untouched(goods)
