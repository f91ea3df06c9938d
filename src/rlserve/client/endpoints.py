"""The inference and info calls of both clients, written once.

Each method builds its call's flow and hands it to the client's `_run`: the blocking
`Client` returns the result, the `AsyncClient` returns an awaitable of it (a stream is
an iterator of chunk dicts, or an async iterator). Nothing runs before that: on the
async client every step happens when the call is awaited.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from rlserve.client.base import ClientBase
from rlserve.client.effects import Flow
from rlserve.client.flows import decoded, inference
from rlserve.client.payloads import call_defaults, get_call, models_call, prepare


class Endpoints(ClientBase):
    """`completion`, `generate`, `generate_rl`, `models`, `health`, `metrics` and the
    OpenAI-SDK-style `completions.create` / `chat.completions.create`."""

    def completion(self, prompt: str | list[int] | list[str], **kwargs: Any) -> Any:
        """`/v1/completions` with training defaults (logprobs, token ids, vLLM fields)."""
        return self._run(self._inference("completion", {**kwargs, "prompt": prompt}, True))

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """`/v1/chat/completions` with training defaults (logprobs, token ids, vLLM fields)."""
        return self._run(self._inference("chat", {**kwargs, "messages": messages}, True))

    def generate_rl(self, prompt: Any = None, **kwargs: Any) -> Any:
        """rlserve's `/generate`: `prompt` (or `input_ids=`), sampling fields, `n`,
        `logprobs`, `policy_version`, `step_id`, `request_id`."""
        return self._run(self._inference("generate", {**kwargs, "prompt": prompt}, False))

    def models(self) -> Any:
        """`GET /v1/models`."""
        return self._run(decoded(self, models_call()))

    def health(self) -> Any:
        """`GET /health`."""
        return self._run(decoded(self, get_call("/health")))

    def metrics(self, prometheus: bool = False) -> Any:
        """`GET /metrics`: a JSON dict, or the Prometheus text when `prometheus=True`."""
        accept = "text/plain" if prometheus else "application/json"
        return self._run(decoded(self, get_call("/metrics", {"Accept": accept})))

    @cached_property
    def completions(self) -> Completions:
        return Completions(self)

    @cached_property
    def chat(self) -> Chat:
        return Chat(self)

    def _inference(self, kind: str, kwargs: dict[str, Any], training: bool) -> Flow[Any]:
        """The flow of a completion/chat/generate call; `training`: the defaults of
        `completion()` / `generate()` rather than those of `*.create()`."""
        path = _PATHS[kind]
        defaults = None if kind == "generate" else call_defaults(kind, training)
        return (yield from inference(self, kind, prepare(path, kwargs, defaults)))


_PATHS = {"completion": "/v1/completions", "chat": "/v1/chat/completions", "generate": "/generate"}


class Completions:
    """`client.completions.create(...)` and `client.chat.completions.create(...)`,
    OpenAI-SDK style (returns dicts)."""

    def __init__(self, client: Endpoints, kind: str = "completion") -> None:
        self._client = client
        self._kind = kind

    def create(self, **kwargs: Any) -> Any:
        """POST /v1/completions (/v1/chat/completions for `chat.completions`); `stream=True`
        returns an iterator of chunk dicts (an async iterator on the `AsyncClient`)."""
        return self._client._run(self._client._inference(self._kind, kwargs, False))


class Chat:
    """`client.chat.completions.create(...)`."""

    def __init__(self, client: Endpoints) -> None:
        self.completions = Completions(client, "chat")
