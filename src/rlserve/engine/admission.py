"""Admission checks: refuse in `add_request` what would otherwise fail inside `step()`.

A failure inside `step()` lands on every request sharing the batch, so whatever about a
request can be checked against the loaded model (vocabulary, tokenizer) is checked before
it is queued, with a ValueError that starts with the offending field (contract 6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rlserve.engine.prefix_constraint import TokenTexts, dead_end
from rlserve.sampling_params import SamplingParams


def check_token_ids(field: str, token_ids: Iterable[int], vocab_size: int) -> None:
    bad = next((t for t in token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"{field}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def check_params(
    params: SamplingParams,
    vocab_size: int,
    eos_token_ids: set[int],
    token_texts: Callable[[], TokenTexts],
) -> None:
    """`params` fit this model: every token they name exists, and some token can always be
    sampled. `token_texts` builds the (cached) token index only when prefix_choices is set."""
    check_token_ids("stop_token_ids", params.stop_token_ids, vocab_size)
    if params.min_tokens:
        banned = set(params.stop_token_ids) | (set() if params.ignore_eos else eos_token_ids)
        if len(banned) >= vocab_size:
            raise ValueError(
                f"stop_token_ids: with min_tokens={params.min_tokens} they and "
                "EOS ban every token of the vocabulary; nothing could be sampled"
            )
    if params.prefix_choices:
        stuck = dead_end(token_texts(), params.prefix_choices)
        if stuck is not None:
            raise ValueError(
                f"prefix_choices cannot be spelled with this tokenizer's tokens: "
                f"no token continues after {stuck!r}"
            )


def score_pairs(
    prompt_token_ids: object, response_token_ids: object
) -> tuple[bool, list[list[int]], list[list[int]]]:
    """`Engine.score`'s arguments as (single pair given, prompts, responses).

    Only token ids are taken: scoring must see exactly the tokens that were generated, and
    tokenising a prompt and a response text separately does not give them back (BPE merges
    across the boundary; contract 4)."""
    if _has_text(prompt_token_ids) or _has_text(response_token_ids):
        raise ValueError(
            "score takes token ids, not text: pass prompt_token_ids and "
            "response_token_ids as lists of ints (e.g. the token_ids a generate "
            "call returned, or engine.tokenizer.encode(text))"
        )
    single = _is_ids(prompt_token_ids)
    prompts = [prompt_token_ids] if single else prompt_token_ids
    responses = [response_token_ids] if single else response_token_ids
    if (
        not isinstance(prompts, (list, tuple))
        or not isinstance(responses, (list, tuple))
        or not all(_is_ids(p) and p for p in prompts)
    ):
        raise ValueError(
            "prompt_token_ids must be a non-empty list of token ids, or a list of such lists"
        )
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    for response in responses:
        if not _is_ids(response) or not response:
            raise ValueError("each response must be a non-empty list of token ids")
    return single, [list(p) for p in prompts], [list(r) for r in responses]


def _is_ids(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _has_text(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value)
    )
