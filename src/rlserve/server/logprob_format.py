"""Logprobs in OpenAI's shapes (completions vs chat) and vLLM's `prompt_logprobs`.

Token strings are the decoded token text, or `token_id:N` when the request set
`return_tokens_as_token_ids` (vLLM's convention, which survives JSON for any token).
OpenAI's completions `top_logprobs` dicts hold the sampled token plus its k alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

FLOOR = -9999.0  # what OpenAI and vLLM send instead of -inf, which JSON cannot carry


def clamp(logprob: float | None) -> float | None:
    if logprob is None:
        return None
    if math.isnan(logprob):
        return FLOOR
    return max(float(logprob), FLOOR)


class TokenRenderer:
    """Token id -> the string used in logprobs (cached decode of single tokens)."""

    def __init__(self, tokenizer: Any) -> None:
        self._text = lru_cache(maxsize=1 << 16)(
            lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False)
        )

    def text(self, token_id: int) -> str:
        return self._text(token_id)

    def render(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self._text(token_id)


def _with_sampled(token_id: int, logprob: float | None, top: dict[int, float] | None) -> dict:
    merged: dict[int, float | None] = {token_id: logprob}
    for alt_id, alt_lp in (top or {}).items():
        merged.setdefault(alt_id, alt_lp)
    return merged


def completion_logprobs(
    token_ids: list[int],
    logprobs: list[float | None],
    top_logprobs: list[dict[int, float] | None] | None,
    render: Callable[[int], str],
    text_of: Callable[[int], str],
    offset: int = 0,
) -> dict[str, Any]:
    """`choices[i].logprobs` of /v1/completions: tokens, token_logprobs, top_logprobs,
    text_offset (character offsets of each token, starting at `offset`). A token without a
    logprob (the first prompt token under `echo`) has null in both lists, as in vLLM."""
    tokens, offsets, tops = [], [], []
    for t, token_id in enumerate(token_ids):
        tokens.append(render(token_id))
        offsets.append(offset)
        offset += len(text_of(token_id))
        if logprobs[t] is None:  # the first echoed prompt token has no context
            tops.append(None)
            continue
        top = top_logprobs[t] if top_logprobs and t < len(top_logprobs) else None
        merged = _with_sampled(token_id, logprobs[t], top)
        tops.append({render(i): clamp(lp) for i, lp in merged.items()})
    return {
        "tokens": tokens,
        "token_logprobs": [clamp(lp) for lp in logprobs],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(
    token_ids: list[int],
    logprobs: list[float],
    top_logprobs: list[dict[int, float] | None] | None,
    num_top: int,
    render: Callable[[int], str],
) -> dict[str, Any]:
    """`choices[i].logprobs` of /v1/chat/completions: {"content": [...]}."""
    content = []
    for t, token_id in enumerate(token_ids):
        top = top_logprobs[t] if top_logprobs and t < len(top_logprobs) else None
        alts = sorted((top or {}).items(), key=lambda kv: -kv[1])[:num_top]
        content.append(
            {
                **_chat_entry(render(token_id), logprobs[t]),
                "top_logprobs": [_chat_entry(render(i), lp) for i, lp in alts],
            }
        )
    return {"content": content}


def _chat_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": clamp(logprob), "bytes": list(token.encode("utf-8"))}


def prompt_logprobs_entries(
    prompt_ids: list[int],
    logprobs: list[float | None] | None,
    top_logprobs: list[dict[int, float] | None] | None,
    text_of: Callable[[int], str],
) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's `prompt_logprobs`: None for the first token, then per token
    {"<id>": {"logprob", "rank", "decoded_token"}} for the prompt token and alternatives."""
    if logprobs is None:
        return None
    entries: list[dict[str, dict[str, Any]] | None] = []
    for t, token_id in enumerate(prompt_ids):
        if t >= len(logprobs) or logprobs[t] is None:
            entries.append(None)
            continue
        top = top_logprobs[t] if top_logprobs and t < len(top_logprobs) else None
        ranked = sorted((top or {}).items(), key=lambda kv: -kv[1])
        ranks = {i: r + 1 for r, (i, _) in enumerate(ranked)}
        merged = _with_sampled(token_id, logprobs[t], top)
        entries.append(
            {
                str(i): {"logprob": clamp(lp), "rank": ranks.get(i), "decoded_token": text_of(i)}
                for i, lp in merged.items()
            }
        )
    return entries
