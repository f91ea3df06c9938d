"""The one client core: both transports send the same requests for every call, and the
weight-sync window of an update closes however the call ends (no sockets: httpx mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rlserve.client import APIStatusError, AsyncClient, Client, WeightSyncController
from rlserve.pause_mode import PauseMode

MESSAGES = [{"role": "user", "content": "x"}]
CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("completion", ("hi",), {"max_tokens": 2, "extra_headers": {"X-Trace": "1"}}),
    ("generate", (MESSAGES,), {"temperature": 0.5}),
    ("generate_rl", ("hi",), {"step_id": 1}),
    ("models", (), {}),
    ("health", (), {}),
    ("metrics", (), {"prometheus": True}),
    ("update_weights_from_path", ("B",), {"version": 3, "mode": PauseMode.WAIT}),
    ("load_adapter", ("lora",), {"name": "x"}),
    ("unload_adapter", ("x",), {}),
    ("pause", (), {"mode": "abort"}),
    ("resume", (), {"recompute_kv": True}),
    ("abort", ("r1",), {}),
    ("policy_version", (), {}),
]
ADMIN = set(
    "update_weights_from_path load_adapter unload_adapter pause resume abort policy_version".split()
)


def _reply(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/models":
        return httpx.Response(200, json={"data": [{"id": "tiny"}]})
    return httpx.Response(200, json={"policy_version": 5, "choices": []})


def _recording(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: seen.append(request) or _reply(request)


def _wire(request: httpx.Request) -> tuple[str, str, str | None, str | None, bytes]:
    auth = request.headers.get("authorization")
    return request.method, str(request.url), auth, request.headers.get("x-trace"), request.content


def _mocked(client: Any, handler: Callable[[httpx.Request], Any]) -> Any:
    """`client` with its transport answered by `handler` (same base URL and headers)."""
    options = {"base_url": client.base_url, "headers": client._http_options["headers"]}
    transport = httpx.MockTransport(handler)
    is_async = isinstance(client, AsyncClient)
    client._http = (httpx.AsyncClient if is_async else httpx.Client)(transport=transport, **options)
    return client


def _sync_wire(name: str, args: tuple, kwargs: dict) -> tuple[list, Any]:
    seen: list[httpx.Request] = []
    client = _mocked(Client("http://h", api_key="k", admin_key="a"), _recording(seen))
    with client:
        result = getattr(client, name)(*args, **kwargs)
    return [_wire(r) for r in seen], result


def _async_wire(name: str, args: tuple, kwargs: dict) -> tuple[list, Any]:
    seen: list[httpx.Request] = []

    async def go() -> Any:
        client = _mocked(AsyncClient("http://h", api_key="k", admin_key="a"), _recording(seen))
        async with client:
            return await getattr(client, name)(*args, **kwargs)

    result = asyncio.run(go())
    return [_wire(r) for r in seen], result


@pytest.mark.parametrize(("name", "args", "kwargs"), CALLS, ids=[c[0] for c in CALLS])
def test_both_clients_send_the_same_request(name: str, args: tuple, kwargs: dict) -> None:
    sync_requests, sync_result = _sync_wire(name, args, kwargs)
    async_requests, async_result = _async_wire(name, args, kwargs)
    assert sync_requests == async_requests and sync_result == async_result
    method, url, auth, _, content = sync_requests[-1]
    assert auth == ("Bearer a" if name in ADMIN else "Bearer k")
    if name == "update_weights_from_path":
        assert content == b'{"path":"B","mode":"wait","recompute_kv":false,"version":3}'
    if name == "pause":
        assert content == b'{"mode":"abort"}'
    if name == "policy_version":
        assert (method, url, sync_result) == ("GET", "http://h/policy_version", 5)


def test_streamed_update_sends_the_same_safetensors_from_both_clients() -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load

    weights = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    sync_requests, _ = _sync_wire("update_weights", (weights,), {"version": 2})
    async_requests, _ = _async_wire("update_weights", (weights,), {"version": 2})
    assert sync_requests == async_requests
    method, url, auth, _, content = sync_requests[0]
    assert url == "http://h/update_weights?mode=keep&recompute_kv=false&version=2"
    assert torch.equal(load(content)["a.weight"], weights["a.weight"])


def test_a_bad_update_mode_is_refused_before_any_sync_begins() -> None:
    controller = WeightSyncController()
    with Client("http://h", weight_sync=controller) as client:
        with pytest.raises(ValueError, match="mode"):
            client.update_weights({}, mode="bogus")

    async def go() -> None:
        async with AsyncClient("http://h", weight_sync=controller) as aclient:
            pending = aclient.update_weights({}, mode="bogus")  # nothing runs before await
            with pytest.raises(ValueError, match="mode"):
                await pending

    asyncio.run(go())
    assert not controller.is_syncing()


def test_a_failed_update_ends_the_sync_and_is_not_retried() -> None:
    controller = WeightSyncController()
    seen: list[httpx.Request] = []

    def busy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"error": {"message": "busy"}})

    with _mocked(Client("http://h", weight_sync=controller), busy) as client:
        with pytest.raises(APIStatusError) as err:
            client.update_weights_from_path("B")
    assert err.value.status_code == 503 and len(seen) == 1
    assert not controller.is_syncing()

    async def go() -> None:
        async with _mocked(AsyncClient("http://h", weight_sync=controller), busy) as aclient:
            with pytest.raises(APIStatusError):
                await aclient.update_weights_from_path("B")

    asyncio.run(go())
    assert len(seen) == 2 and not controller.is_syncing()


def test_a_cancelled_async_update_ends_the_sync() -> None:
    controller = WeightSyncController()
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        return httpx.Response(200, json={})

    async def go() -> None:
        async with _mocked(AsyncClient("http://h", weight_sync=controller), hang) as aclient:
            task = asyncio.create_task(aclient.update_weights_from_path("B"))
            await asyncio.sleep(0.05)
            assert controller.is_syncing()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert not controller.is_syncing()


def test_concurrent_async_calls_look_up_the_default_model_once() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return _reply(request)

    async def go() -> None:
        async with _mocked(AsyncClient("http://h"), handler) as aclient:
            await asyncio.gather(*(aclient.completion("x") for _ in range(5)))

    asyncio.run(go())
    assert seen.count("/v1/models") == 1 and seen.count("/v1/completions") == 5
