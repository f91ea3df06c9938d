"""Seed 001's `get_logits` / `get_logprobs` inputs and outputs over a backend's `logits`
and `score`: prompts and responses to (prompt ids, response ids) pairs, rows to a padded
batch."""

from __future__ import annotations

from typing import Any

import torch

from rlserve._checks import is_token_ids
from rlserve.backends.base import InferenceBackend, ScorePair
from rlserve.backends.complete import prompt_token_ids
from rlserve.compat.padding import pad_rows


def as_prompt_list(prompts: Any, field: str = "prompts") -> list[Any]:
    """One prompt (text, token ids or a message list) as a list of one; a list of prompts
    as it is; ValueError naming `field` for anything else (each prompt is checked later)."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{field} must be a string or a non-empty list, got {prompts!r:.80}")
    if is_token_ids(prompts) or all(isinstance(m, dict) for m in prompts):
        return [list(prompts)]
    return list(prompts)


def score_pairs(tokenizer: Any, prompts: Any, responses: Any) -> list[ScorePair]:
    """(prompt ids, response ids) for each prompt and its response. Prompts are tokenized
    as `generate` does; text responses without special tokens (a response's own ids are
    exact: text is re-tokenized, which may split differently than it was sampled)."""
    prompt_list = as_prompt_list(prompts)
    response_list = _as_response_list(responses)
    if len(prompt_list) != len(response_list):
        raise ValueError(
            f"responses: got {len(response_list)} responses for {len(prompt_list)} prompts"
        )
    pairs = []
    for k, (prompt, response) in enumerate(zip(prompt_list, response_list, strict=True)):
        if isinstance(response, str):
            response_ids = tokenizer.encode(response, add_special_tokens=False)
        elif is_token_ids(response):
            response_ids = list(response)
        else:
            raise ValueError(
                f"responses[{k}] must be a string or a list of token ids, got {response!r:.80}"
            )
        pairs.append((prompt_token_ids(tokenizer, prompt), response_ids))
    return pairs


def _as_response_list(responses: Any) -> list[Any]:
    if isinstance(responses, str):
        return [responses]
    if not isinstance(responses, (list, tuple)):
        raise ValueError(f"responses must be a string or a list, got {responses!r:.80}")
    if responses and is_token_ids(responses):
        return [list(responses)]
    return list(responses)


def logit_rows(backend: InferenceBackend, pairs: list[ScorePair]) -> list[torch.Tensor]:
    """`backend.logits` of every pair ([len(response), vocab] each), under the caller's
    grad mode; an empty response gets a [0, vocab] row without asking the backend."""
    scored = [k for k, (_, response) in enumerate(pairs) if response]
    computed = backend.logits([pairs[k] for k in scored]) if scored else []
    rows: list[torch.Tensor | None] = [None] * len(pairs)
    for k, row in zip(scored, computed, strict=True):
        rows[k] = row
    template = computed[0] if computed else torch.zeros(0, vocab_size(backend))
    return [template.new_zeros(0, template.shape[-1]) if r is None else r for r in rows]


def logprob_rows(
    backend: InferenceBackend, pairs: list[ScorePair], temperature: float, differentiable: bool
) -> list[torch.Tensor]:
    """The logprob of every response token, log_softmax(logits / T): from `logits` when
    `differentiable` (autograd reaches the model), else from the backend's `score`."""
    if differentiable:
        rows = logit_rows(backend, pairs)
        return [
            torch.log_softmax(row.float() / temperature, dim=-1)
            .gather(-1, torch.tensor(response, device=row.device, dtype=torch.long)[:, None])
            .squeeze(-1)
            for row, (_, response) in zip(rows, pairs, strict=True)
        ]
    scored = [k for k, (_, response) in enumerate(pairs) if response]
    values = backend.score([pairs[k] for k in scored], temperature) if scored else []
    rows = [torch.zeros(0) for _ in pairs]
    for k, row in zip(scored, values, strict=True):
        rows[k] = torch.tensor(row, dtype=torch.float32)
    return rows


def padded(rows: list[torch.Tensor], return_mask: bool) -> Any:
    """`rows` as one zero-padded batch, with its bool mask when `return_mask`."""
    batch, mask = pad_rows(rows)
    return (batch, mask) if return_mask else batch


def vocab_size(backend: InferenceBackend) -> int:
    config = getattr(getattr(backend, "model", None), "config", None)
    size = getattr(config, "vocab_size", None)
    return size if isinstance(size, int) else len(backend.tokenizer)
