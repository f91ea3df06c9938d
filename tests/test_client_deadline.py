"""A call's `timeout` bounds the whole call, retries and backoff included (sync and async),
against real loopback servers: one that never answers, one that is busy, none at all."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rlserve.client import APIConnectionError, APIStatusError, APITimeoutError, AsyncClient, Client
from tests.support.fake_http import FakeHTTPServer, Recorded
from tests.support.servers import free_port

OK = {"status": "healthy"}
# The defaults that turned a 0.5 s timeout into 115 s: 10 retries, backoff 0.5 s ... 30 s.
PATIENT = {"max_retries": 10, "initial_backoff": 0.5, "max_backoff": 30.0}
# Far below what even one default-policy retry would take, far above one attempt.
BOUND = 5.0


@pytest.fixture
def silent() -> Iterator[FakeHTTPServer]:
    """A server that takes requests and answers only when the test ends."""
    release = threading.Event()

    def handler(req: Recorded, n: int) -> tuple[int, Any, dict[str, str]]:
        release.wait(60)
        return 200, OK, {}

    server = FakeHTTPServer(handler)
    yield server
    release.set()
    server.close()


def _busy_with_long_retry_after(req: Recorded, n: int) -> tuple[int, Any, dict[str, str]]:
    error = {"error": {"message": "busy", "type": "x", "param": None, "code": None}}
    return 503, error, {"Retry-After": "20"}


def _elapsed(fn: Any) -> tuple[float, BaseException]:
    start = time.monotonic()
    with pytest.raises(Exception) as caught:
        fn()
    return time.monotonic() - start, caught.value


def test_sync_read_timeout_is_not_retried_past_the_call_timeout(silent: FakeHTTPServer) -> None:
    with Client(silent.url, model="m", **PATIENT) as client:
        for call in (
            lambda: client.completion("hi", timeout=0.5),
            lambda: client.chat.completions.create(messages=[], timeout=0.5, stream=True),
        ):
            seconds, error = _elapsed(call)
            assert isinstance(error, APITimeoutError), error
            assert isinstance(error, APIConnectionError)  # as the openai SDK nests them
            assert 0.4 < seconds < BOUND
    assert len(silent.requests) == 2  # one attempt each: no time was left for a retry


def test_client_timeout_is_the_default_total_deadline(silent: FakeHTTPServer) -> None:
    with Client(silent.url, timeout=0.5, **PATIENT) as client:
        seconds, error = _elapsed(client.health)
    assert isinstance(error, APITimeoutError) and seconds < BOUND


def test_async_read_timeout_is_not_retried_past_the_call_timeout(silent: FakeHTTPServer) -> None:
    async def go(stream: bool) -> None:
        async with AsyncClient(silent.url, model="m", **PATIENT) as client:
            await client.completions.create(prompt="hi", timeout=0.5, stream=stream)

    for stream in (False, True):
        seconds, error = _elapsed(lambda stream=stream: asyncio.run(go(stream)))
        assert isinstance(error, APITimeoutError), error
        assert seconds < BOUND
    assert len(silent.requests) == 2


def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    server = FakeHTTPServer(_busy_with_long_retry_after)
    try:
        with Client(server.url, model="m", **PATIENT) as client:
            seconds, error = _elapsed(lambda: client.completion("hi", timeout=2.0))
        assert isinstance(error, APIStatusError) and error.status_code == 503
        assert seconds < BOUND and len(server.requests) == 1

        async def go() -> None:
            async with AsyncClient(server.url, timeout=2.0, **PATIENT) as client:
                await client.health()

        seconds, error = _elapsed(lambda: asyncio.run(go()))
        assert isinstance(error, APIStatusError) and seconds < BOUND
        assert len(server.requests) == 2
    finally:
        server.close()


def test_connection_errors_are_retried_only_while_time_is_left() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    many = {"max_retries": 1_000_000, "initial_backoff": 0.01, "max_backoff": 0.05}
    with Client(url, model="m", **many) as client:
        seconds, error = _elapsed(lambda: client.completion("hi", timeout=0.5))
    assert type(error) is APIConnectionError and seconds < BOUND


def test_a_wait_that_overruns_the_deadline_ends_with_the_last_error(monkeypatch) -> None:
    """Fault injection: the backoff sleep wakes up long after the deadline (as under load),
    which no real input can force. The call ends with the connection error of its last
    attempt, not a timeout it never had."""
    import rlserve.client.sync_client as sync_client

    late = type("LateClock", (), {"sleep": staticmethod(lambda s: time.sleep(s + 0.6))})
    monkeypatch.setattr(sync_client, "time", late)
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    with Client(url, model="m", max_retries=5, initial_backoff=0.01) as client:
        _, error = _elapsed(lambda: client.completion("hi", timeout=0.5))
    assert type(error) is APIConnectionError


def test_retries_that_fit_still_happen() -> None:
    def handler(req: Recorded, n: int) -> tuple[int, Any, dict[str, str]]:
        return (503, {"error": {"message": "busy"}}, {}) if n <= 2 else (200, OK, {})

    server = FakeHTTPServer(handler)
    try:
        fast = {"max_retries": 5, "initial_backoff": 0.001, "max_backoff": 0.01}
        with Client(server.url, timeout=30.0, **fast) as client:
            assert client.health() == OK
        assert len(server.requests) == 3
    finally:
        server.close()


@pytest.mark.parametrize("timeout", [0, -1.0, "10", True])
def test_bad_timeouts_are_refused(timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        Client("http://127.0.0.1:9", timeout=timeout)
    with Client("http://127.0.0.1:9", model="m") as client, pytest.raises(ValueError):
        client.completion("hi", timeout=timeout)
