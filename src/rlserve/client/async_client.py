"""Asyncio client for rlserve and any OpenAI-compatible server (vLLM, SGLang)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from rlserve.client import effects as fx
from rlserve.client.admin import Admin
from rlserve.client.endpoints import Endpoints
from rlserve.client.sse import DONE, parse_sse_line


class AsyncClient(Admin, Endpoints):
    """Async twin of `Client`; use as `async with AsyncClient(url) as client: ...`.

    Same methods (awaitable), same `rlserve_train` training data, same retry rules.
    """

    def _open(self) -> None:
        self._http = httpx.AsyncClient(**self._http_options)
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, flow: fx.Flow[Any]) -> Any:
        step = fx.Outcome().send(flow)
        while not isinstance(step, fx.Done):
            step = (await fx.acapture(self._perform, step)).send(flow)
        return step.value

    async def _perform(self, effect: Any) -> Any:
        match effect:
            case fx.Transmit(options, stream):
                request = self._http.build_request(**_async_content(options))
                response = await self._http.send(request, stream=stream)
                if response.status_code >= 400:
                    await response.aread()
                    await response.aclose()
                return response
            case fx.Sleep(seconds):
                return await asyncio.sleep(seconds)
            case fx.AwaitWeightSync(controller, model_tag):
                return await controller.await_weight_sync(model_tag)
            case fx.Offload(fn, args):
                return await asyncio.to_thread(fn, *args)
            case fx.Locked(flow):
                async with self._lock:
                    return await self._run(flow)
            case fx.Chunks(response):
                return _aiter_chunks(response)
        raise TypeError(f"not an effect: {effect!r}")


def _async_content(options: dict[str, Any]) -> dict[str, Any]:
    """An `httpx.AsyncClient` streams only async iterables: wrap a chunk iterator."""
    content = options.get("content")
    if isinstance(content, Iterator):
        return {**options, "content": _aiter(content)}
    return options


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _aiter_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    try:
        async for line in response.aiter_lines():  # sse_chunks, which it cannot delegate to
            if (chunk := parse_sse_line(line)) is DONE:
                return
            if chunk is not None:
                yield chunk
    finally:
        await response.aclose()
