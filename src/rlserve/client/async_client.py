"""Asyncio client for rlserve and any OpenAI-compatible server (vLLM, SGLang)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from rlserve.client.admin_async import AsyncAdmin
from rlserve.client.base import ClientBase
from rlserve.client.payloads import (
    PreparedCall,
    attach_training_data,
    decode_body,
    first_model_id,
    request_options,
)
from rlserve.client.retry import wait_or_raise
from rlserve.client.sse import DONE, parse_sse_line


class AsyncClient(AsyncAdmin, ClientBase):
    """Async twin of `Client`; use as `async with AsyncClient(url) as client: ...`.

    Same methods (awaitable), same `rlserve_train` training data, same retry rules.
    """

    def _open(self) -> None:
        self._http = httpx.AsyncClient(**self._http_options)
        self._model_lock = asyncio.Lock()
        self.completions = _AsyncCompletions(self)
        self.chat = _AsyncChat(self)

    async def completion(self, prompt: str | list[int] | list[str], **kwargs: Any) -> Any:
        """`/v1/completions` with training defaults (logprobs, token ids, vLLM fields)."""
        call = self._completion_call({**kwargs, "prompt": prompt}, True)
        return await self._call("completion", call)

    async def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """`/v1/chat/completions` with training defaults (logprobs, token ids, vLLM fields)."""
        return await self._call("chat", self._chat_call({**kwargs, "messages": messages}, True))

    async def generate_rl(self, prompt: Any = None, **kwargs: Any) -> dict[str, Any]:
        """rlserve's `/generate` (see `Client.generate_rl`)."""
        return await self._call("generate", self._generate_call({**kwargs, "prompt": prompt}))

    async def models(self) -> dict[str, Any]:
        """`GET /v1/models`."""
        return await self._json(PreparedCall("/v1/models", {}), method="GET")

    async def health(self) -> dict[str, Any]:
        """`GET /health`."""
        return await self._json(PreparedCall("/health", {}), method="GET")

    async def metrics(self, prometheus: bool = False) -> Any:
        """`GET /metrics`: a JSON dict, or the Prometheus text when `prometheus=True`."""
        accept = "text/plain" if prometheus else "application/json"
        call = PreparedCall("/metrics", {}, headers={"Accept": accept})
        return await self._json(call, method="GET")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, kind: str, call: PreparedCall) -> Any:
        if self._frozen_by is not None:
            await self._frozen_by.await_weight_sync(self.model_tag)
        if kind != "generate" and "model" not in call.body:
            call.body["model"] = await self._default_model()
        if call.stream:
            return _aiter_chunks(await self._send("POST", call, stream=True))
        response = await self._json(call)
        prompts = None
        if self._needs_client_prompt_ids(kind, call, response):
            # Rendering and encoding take milliseconds per prompt: off the event loop, so
            # hundreds of concurrent rollouts do not queue behind them.
            prompts = await asyncio.to_thread(self._client_prompt_ids, kind, call.body)
        return attach_training_data(kind, call, response, prompts)

    async def _default_model(self) -> str:
        async with self._model_lock:
            if self.model is None:
                self.model = first_model_id(await self.models())
        return self.model

    async def _json(self, call: PreparedCall, method: str = "POST") -> Any:
        return decode_body(await self._send(method, call))

    async def _send(self, method: str, call: PreparedCall, stream: bool = False) -> httpx.Response:
        """`Client._send`, awaitable."""
        deadline = self._deadline(call)
        attempt = 0
        while True:
            options = request_options(method, call, deadline.attempt_timeout())
            request = self._http.build_request(method, call.path, **options)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = wait_or_raise(self.retry_policy, deadline, attempt, method, call.path, exc)
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                delay = wait_or_raise(
                    self.retry_policy, deadline, attempt, method, call.path, response
                )
            await asyncio.sleep(delay)
            attempt += 1


async def _aiter_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    try:
        async for line in response.aiter_lines():
            chunk = parse_sse_line(line)
            if chunk is DONE:
                return
            if chunk is not None:
                yield chunk
    finally:
        await response.aclose()


class _AsyncCompletions:
    """`await client.completions.create(...)`, OpenAI-SDK style (returns dicts)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, **kwargs: Any) -> Any:
        """POST /v1/completions; `stream=True` returns an async iterator of chunk dicts."""
        return await self._client._call("completion", self._client._completion_call(kwargs, False))


class _AsyncChatCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, **kwargs: Any) -> Any:
        """POST /v1/chat/completions; `stream=True` returns an async iterator of chunks."""
        return await self._client._call("chat", self._client._chat_call(kwargs, False))


class _AsyncChat:
    """`client.chat.completions.create(...)`."""

    def __init__(self, client: AsyncClient) -> None:
        self.completions = _AsyncChatCompletions(client)
