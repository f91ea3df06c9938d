"""Blocking client for rlserve and any OpenAI-compatible server (vLLM, SGLang)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from rlserve.client.admin_sync import SyncAdmin
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


class Client(SyncAdmin, ClientBase):
    """Synchronous client. Every completion/chat/generate response is a dict with
    `rlserve_train` = {"prompt_tokens", "response_tokens", "response_logprobs", ...}.

    Retries connection errors, 429 and 5xx with exponential backoff and jitter
    (`max_retries` times, never past the call's `timeout`, which bounds the whole call);
    other 4xx raise `APIStatusError` at once.
    """

    def _open(self) -> None:
        self._http = httpx.Client(**self._http_options)
        self.completions = _Completions(self)
        self.chat = _Chat(self)

    def completion(self, prompt: str | list[int] | list[str], **kwargs: Any) -> dict[str, Any]:
        """`/v1/completions` with training defaults (logprobs, token ids, vLLM fields)."""
        return self._call("completion", self._completion_call({**kwargs, "prompt": prompt}, True))

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """`/v1/chat/completions` with training defaults (logprobs, token ids, vLLM fields)."""
        call = self._chat_call({**kwargs, "messages": messages}, True)
        return self._call("chat", call)

    def generate_rl(self, prompt: Any = None, **kwargs: Any) -> dict[str, Any]:
        """rlserve's `/generate`: `prompt` (or `input_ids=`), sampling fields, `n`,
        `logprobs`, `policy_version`, `step_id`, `request_id`."""
        return self._call("generate", self._generate_call({**kwargs, "prompt": prompt}))

    def models(self) -> dict[str, Any]:
        """`GET /v1/models`."""
        return self._json(PreparedCall("/v1/models", {}), method="GET")

    def health(self) -> dict[str, Any]:
        """`GET /health`."""
        return self._json(PreparedCall("/health", {}), method="GET")

    def metrics(self, prometheus: bool = False) -> Any:
        """`GET /metrics`: a JSON dict, or the Prometheus text when `prometheus=True`."""
        accept = "text/plain" if prometheus else "application/json"
        call = PreparedCall("/metrics", {}, headers={"Accept": accept})
        return self._json(call, method="GET")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, kind: str, call: PreparedCall) -> Any:
        if self._frozen_by is not None:
            self._frozen_by.wait_for_weight_sync(self.model_tag)
        if kind != "generate" and "model" not in call.body:
            call.body["model"] = self._default_model()
        if call.stream:
            return _iter_chunks(self._send("POST", call, stream=True))
        response = self._json(call)
        prompts = None
        if self._needs_client_prompt_ids(kind, call, response):
            prompts = self._client_prompt_ids(kind, call.body)
        return attach_training_data(kind, call, response, prompts)

    def _default_model(self) -> str:
        if self.model is None:
            self.model = first_model_id(self.models())
        return self.model

    def _json(self, call: PreparedCall, method: str = "POST") -> Any:
        return decode_body(self._send(method, call))

    def _send(self, method: str, call: PreparedCall, stream: bool = False) -> httpx.Response:
        """The first successful response to `call` (with `stream`, its body still to be
        read), retried within the call's deadline. A stream is retried only until it
        opens; a broken stream is not replayed."""
        deadline = self._deadline(call)
        attempt = 0
        while True:
            options = request_options(method, call, deadline.attempt_timeout())
            request = self._http.build_request(method, call.path, **options)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = wait_or_raise(self.retry_policy, deadline, attempt, method, call.path, exc)
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                delay = wait_or_raise(
                    self.retry_policy, deadline, attempt, method, call.path, response
                )
            time.sleep(delay)
            attempt += 1


def _iter_chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    try:
        for line in response.iter_lines():
            chunk = parse_sse_line(line)
            if chunk is DONE:
                return
            if chunk is not None:
                yield chunk
    finally:
        response.close()


class _Completions:
    """`client.completions.create(...)`, OpenAI-SDK style (returns dicts)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, **kwargs: Any) -> Any:
        """POST /v1/completions; `stream=True` returns an iterator of chunk dicts."""
        return self._client._call("completion", self._client._completion_call(kwargs, False))


class _ChatCompletions:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, **kwargs: Any) -> Any:
        """POST /v1/chat/completions; `stream=True` returns an iterator of chunk dicts."""
        return self._client._call("chat", self._client._chat_call(kwargs, False))


class _Chat:
    """`client.chat.completions.create(...)`."""

    def __init__(self, client: Client) -> None:
        self.completions = _ChatCompletions(client)
