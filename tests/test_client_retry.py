"""Client retries against a real tiny HTTP server: 503/429 retried, 400 not."""

from __future__ import annotations

import asyncio

import pytest

from rlserve.client import APIConnectionError, APIStatusError, AsyncClient, Client, RetryPolicy
from rlserve.client.retry import retry_delay
from tests.support.fake_http import FakeHTTPServer, Recorded
from tests.support.servers import free_port

OK = {"status": "healthy", "model_loaded": True}
FAST = {"initial_backoff": 0.001, "max_backoff": 0.01}


def _fail_first(times: int, status: int):
    def handler(req: Recorded, n: int):
        if n <= times:
            return status, {"error": {"message": "busy", "type": "x", "param": None}}, {}
        return 200, OK, {}

    return handler


@pytest.fixture
def flaky():
    server = FakeHTTPServer(_fail_first(3, 503))
    yield server
    server.close()


def test_sync_retries_503_then_succeeds(flaky: FakeHTTPServer) -> None:
    with Client(flaky.url, max_retries=5, **FAST) as client:
        assert client.health() == OK
    assert len(flaky.requests) == 4


def test_sync_gives_up_after_max_retries(flaky: FakeHTTPServer) -> None:
    with Client(flaky.url, max_retries=2, **FAST) as client, pytest.raises(APIStatusError) as err:
        client.health()
    assert err.value.status_code == 503 and err.value.message == "busy"
    assert len(flaky.requests) == 3


def test_async_retries_429_then_succeeds() -> None:
    server = FakeHTTPServer(_fail_first(2, 429))

    async def go() -> dict:
        async with AsyncClient(server.url, max_retries=5, **FAST) as client:
            return await client.health()

    try:
        assert asyncio.run(go()) == OK
        assert len(server.requests) == 3
    finally:
        server.close()


@pytest.mark.parametrize("status", [400, 404, 422])
def test_4xx_is_not_retried(status: int) -> None:
    server = FakeHTTPServer(_fail_first(100, status))
    try:
        with Client(server.url, max_retries=5, **FAST) as client:
            with pytest.raises(APIStatusError) as err:
                client.completion("hi", model="m")
        assert err.value.status_code == status
        assert len(server.requests) == 1

        async def go() -> None:
            async with AsyncClient(server.url, max_retries=5, **FAST) as client:
                await client.generate_rl("hi")

        with pytest.raises(APIStatusError):
            asyncio.run(go())
        assert len(server.requests) == 2
    finally:
        server.close()


def test_connection_refused_is_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, max_retries=2, **FAST) as client, pytest.raises(APIConnectionError):
        client.health()


def test_retry_policy_rules() -> None:
    policy = RetryPolicy(max_retries=3, initial_delay=1.0, max_delay=4.0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 4.0)]:
        assert ceiling / 2 <= policy.delay(attempt) <= ceiling
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert retry_delay(policy, 3, error=ConnectionError()) is None
    assert retry_delay(policy, 0, error=ValueError()) is None
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="max_delay"):
        RetryPolicy(initial_delay=2.0, max_delay=1.0)
