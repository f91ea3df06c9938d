"""Pieces every OpenAI-shaped response shares: the envelope, usage, rlserve's token-id
fields (`return_token_ids`) and server-sent-event framing."""

from __future__ import annotations

import json
import time
from typing import Any

from rlserve.outputs import CompletionOutput, RequestOutput

SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: Any) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False, allow_nan=False)}\n\n"


def envelope(response_id: str, kind: str, model: str) -> dict[str, Any]:
    """`id`, `object`, `created` (this request's time, as OpenAI sends) and `model`."""
    return {"id": response_id, "object": kind, "created": int(time.time()), "model": model}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object. `prompt_tokens_details.cached_tokens` (prompt tokens served
    by the prefix cache) is always sent, as OpenAI does; vLLM sends it only with
    `--enable-prompt-tokens-details`, so its clients find it where they look for it."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def results_usage(results: list[RequestOutput]) -> dict[str, Any]:
    prompt = sum(len(r.prompt_token_ids) for r in results)
    completion = sum(len(s.token_ids) for r in results for s in r.outputs)
    return usage(prompt, completion, sum(r.num_cached_tokens for r in results))


def unrequested_token_fields(kind: str) -> dict[str, None]:
    """vLLM's token fields a response carries as null when not asked for, so SDK attribute
    access (`choice.prompt_logprobs`) works: on a completions choice ("choice") or a chat
    response ("chat") or chat choice ("chat_choice"). Stream chunks leave them out, as
    vLLM's do (it drops unset fields from chunks)."""
    return {name: None for name in _UNREQUESTED[kind]}


_UNREQUESTED = {
    "choice": ("token_ids", "prompt_token_ids", "prompt_logprobs"),
    "chat": ("prompt_token_ids", "prompt_logprobs"),
    "chat_choice": ("token_ids",),
}


def token_id_fields(
    sample: CompletionOutput, prompt_ids: list[int] | None = None
) -> dict[str, Any]:
    """What `return_token_ids` adds to a choice (vLLM's fields plus rlserve's
    `weight_versions`); `prompt_token_ids` only when given."""
    fields: dict[str, Any] = {} if prompt_ids is None else {"prompt_token_ids": prompt_ids}
    fields["token_ids"] = sample.token_ids
    fields["weight_versions"] = sample.weight_versions
    return fields
