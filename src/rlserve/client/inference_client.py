"""Seed 002's `InferenceClient`: an asyncio client of the RL inference server's routes.

    async with InferenceClient("http://localhost:8000") as client:
        result = await client.generate(prompt="...", temperature=0.7, max_tokens=100,
                                       policy_version=1, step_id=100)
        adapter = await client.load_adapter("/path/to/adapter")

Replies are the server's JSON: `generate` gives seed 002's dict (`request_id`,
`policy_version`, `step_id`, `prompt_ids`, `completion_ids`, `text`, `logprobs`,
`finish_reason`, `metadata`; rlserve adds `weight_versions`, `stop_reason`,
`sampling_logprobs` and `rlserve_train`). It runs on rlserve's `AsyncClient` (retries,
deadlines), so an error status raises `APIStatusError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlserve._checks import ParamError, check_int, check_number, is_token_ids
from rlserve.client.async_client import AsyncClient
from rlserve.client.base import DEFAULT_TIMEOUT


class InferenceClient:
    """`generate`, `load_adapter`, `upload_adapter`, `health`, `metrics` (all awaitable).

    `admin_key` (default: `api_key`) is sent with the adapter calls; a server on loopback
    without keys needs neither.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_key: str | None = None,
        *,
        admin_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 10,
    ) -> None:
        if not isinstance(base_url, str) or not base_url:
            raise ValueError(f"base_url must be a non-empty string, got {base_url!r}")
        self.base_url = base_url
        self._client = AsyncClient(
            base_url,
            api_key,
            max_retries,
            timeout,
            admin_key=admin_key or api_key,
            freeze_for_weight_sync=False,
        )

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(
        self,
        prompt: str | list[str] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        logprobs: int | None = None,
        policy_version: int | None = None,
        step_id: int | None = None,
        request_id: str | None = None,
        **sampling: Any,
    ) -> dict[str, Any]:
        """`POST /generate`. `prompt`: text or a list of texts (a list, or `n` > 1, is
        answered with `results`); token ids go as `input_ids=`. `logprobs=k` adds the k
        likeliest alternatives per token (the sampled token's logprob is always there).
        `policy_version` / `step_id` / `request_id` come back as given. Other keywords
        are the server's sampling fields (`n`, `top_k`, `seed`, `stop`, ...)."""
        check_generate_args(prompt, sampling.get("input_ids"), policy_version, step_id)
        if temperature is not None:
            check_number("temperature", temperature, finite=True)
        if max_tokens is not None:
            check_int("max_tokens", max_tokens, minimum=1)
        if request_id is not None and not isinstance(request_id, str):
            raise ParamError("request_id", f"request_id must be a string, got {request_id!r}")
        fields = {
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "logprobs": logprobs,
            "policy_version": policy_version,
            "step_id": step_id,
            "request_id": request_id,
            **sampling,
        }
        return await self._client.generate_rl(prompt, **fields)

    async def load_adapter(self, adapter_path: str, adapter_name: str | None = None) -> Any:
        """`POST /load_adapter`: the adapter at `adapter_path` (a folder the server can read,
        under its --weights-dir) becomes the policy; the reply's `policy_version` is the
        new one. With `adapter_name` it is added as that model id instead."""
        if not isinstance(adapter_path, (str, Path)) or not str(adapter_path):
            raise ParamError("adapter_path", f"adapter_path must be a path, got {adapter_path!r}")
        return await self._client.load_adapter(str(adapter_path), adapter_name)

    async def upload_adapter(self, path: str | Path, adapter_name: str | None = None) -> Any:
        """`POST /upload_adapter`: send a local adapter folder (or .zip) and load it, as
        `load_adapter` does."""
        return await self._client.upload_adapter(path, adapter_name)

    async def health(self) -> Any:
        """`GET /health`: {"status": "healthy", "model_loaded": true, ...}."""
        return await self._client.health()

    async def metrics(self) -> Any:
        """`GET /metrics` as JSON: `current_policy_version`, `queue_depth`,
        `max_batch_size`, `flush_interval_ms`, then the engine's live numbers."""
        return await self._client.metrics()


def check_generate_args(prompt: Any, input_ids: Any, policy_version: Any, step_id: Any) -> None:
    """The prompt (exactly one of text(s) or token ids) and the metadata integers."""
    if (prompt is None) == (input_ids is None):
        raise ParamError("prompt", "give exactly one of prompt or input_ids")
    if prompt is not None and not _is_text_prompt(prompt):
        raise ParamError("prompt", f"prompt must be a string or a list of strings, got {prompt!r}")
    if input_ids is not None and not _is_ids_prompt(input_ids):
        raise ParamError("input_ids", "input_ids must be token ids or a list of token-id lists")
    for name, value in (("policy_version", policy_version), ("step_id", step_id)):
        if value is not None:
            check_int(name, value)


def _is_text_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return True
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(p, str) for p in prompt)


def _is_flat_ids(ids: Any) -> bool:
    return isinstance(ids, list) and bool(ids) and is_token_ids(ids)


def _is_ids_prompt(ids: Any) -> bool:
    if _is_flat_ids(ids):
        return True
    return isinstance(ids, list) and bool(ids) and all(_is_flat_ids(p) for p in ids)
