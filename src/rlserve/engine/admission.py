"""Admission checks: refuse in `add_request` what would otherwise fail inside `step()`.

A failure inside `step()` costs the batch a rerun to isolate the culprit, so whatever about
a request can be checked against the loaded engine (vocabulary, tokenizer, batch size) is
checked before it is queued, with a ValueError that starts with the offending field
(contract 6).
"""

from __future__ import annotations

from collections.abc import Sequence

from rlserve.engine.block_manager import BlockManager
from rlserve.engine.prefix_constraint import TokenTexts
from rlserve.engine.structured import StructuredOutput, check_structured
from rlserve.sampling_params import SamplingParams


def check_token_ids(field: str, token_ids: Sequence[int], vocab_size: int) -> None:
    if not token_ids or (0 <= min(token_ids) and max(token_ids) < vocab_size):
        return
    bad = next(t for t in token_ids if not 0 <= t < vocab_size)
    raise ValueError(f"{field}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def check_params(
    params: SamplingParams,
    vocab_size: int,
    eos_token_ids: set[int],
    token_texts: TokenTexts,
    max_num_seqs: int,
) -> None:
    """`params` fit this engine: every token they name exists, some token can always be
    sampled, and the n samples fit one step."""
    if params.n > max_num_seqs:
        # The n samples of a request run together; more than a step can hold never start.
        raise ValueError(
            f"n ({params.n}) exceeds the {max_num_seqs} sequences one engine step can run "
            "(max_num_seqs); lower n or raise max_num_seqs"
        )
    check_token_ids("stop_token_ids", params.stop_token_ids, vocab_size)
    if params.min_tokens:
        banned = set(params.stop_token_ids) | (set() if params.ignore_eos else eos_token_ids)
        if len(banned) >= vocab_size:
            raise ValueError(
                f"stop_token_ids: with min_tokens={params.min_tokens} they and "
                "EOS ban every token of the vocabulary; nothing could be sampled"
            )
    check_structured_param(params.structured)
    if params.prefix_choices:
        stuck = token_texts.dead_end(params.prefix_choices)
        if stuck is not None:
            raise ValueError(
                f"prefix_choices cannot be spelled with this tokenizer's tokens: "
                f"no token continues after {stuck!r}"
            )


def check_structured_param(structured: object) -> None:
    """A grammar constraint compiles (an invalid JSON schema, regex or grammar is refused
    here, not in the step). getattr above: before SamplingParams has the field, callers
    may set it as an attribute."""
    if structured is None:
        return
    if not isinstance(structured, StructuredOutput):
        raise ValueError(f"structured must be a StructuredOutput, got {type(structured).__name__}")
    check_structured(structured)


def check_fits(
    token_ids: list[int], params: SamplingParams, max_model_len: int, blocks: BlockManager
) -> None:
    """The prompt leaves room for an output, and its longest output fits the KV cache."""
    if len(token_ids) >= max_model_len:
        raise ValueError(
            f"prompt is {len(token_ids)} tokens long but the model's context is "
            f"{max_model_len} tokens (at least one must be left for the output)"
        )
    longest = min(len(token_ids) + params.max_tokens, max_model_len)
    needed = blocks.blocks_needed(longest)
    if needed > blocks.num_blocks:
        raise ValueError(
            f"a sequence of {longest} tokens needs {needed} KV blocks but the cache has "
            f"{blocks.num_blocks}; raise num_blocks or kv_cache_memory, or lower max_tokens"
        )
