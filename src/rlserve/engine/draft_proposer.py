"""The draft-model proposer: a smaller checkpoint with the target's tokenizer guesses
the next tokens greedily.

The draft is loaded by rlserve's own engine code (an inner `EngineCore`, for its model,
tokenizer, ModelRunner and small paged KV), but guesses come from `draft_loop.DraftLoop`,
which drives that ModelRunner and BlockManager directly: the per-step costs of a full
engine step (scheduler, sampler, output processing, detokeniser) dominate a model this
small. Every sequence keeps its draft KV between calls, so each call computes only the
tokens the target appended since the last one; `release` frees it.

The guesses only affect speed: the engine accepts a guess exactly when it equals the
token the target's own seeded sampler picks there (engine/proposer.py), so the output
distribution is the target's, token for token what decoding without speculation gives.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from rlserve._checks import ParamError, check_number
from rlserve.engine.draft_fast import use_fastest_linears
from rlserve.engine.draft_loop import DraftLoop
from rlserve.engine.proposer import ProposalInput
from rlserve.models.decode_step import DecodeStep, unsupported_reason

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

log = logging.getLogger(__name__)

# KV budget of the inner core when `draft_num_blocks` is not given.
DRAFT_KV_CACHE_MEMORY = 64 * 2**20
DEFAULT_MAX_BATCH_SIZE = 8
# A run of guesses stops once the draft's own probability that all of it is right (the
# product of its greedy tokens' probabilities) falls below this: each further guess costs a
# draft step and is unlikely to be accepted. Measured on the bundled pair (bench/speculative.py).
DEFAULT_MIN_RUN_PROBABILITY = 0.5
# Tokens whose strings must agree between draft and target tokenizers (ids spread out).
NUM_CHECKED_TOKENS = 64


class DraftProposer:
    """Greedy guesses from the checkpoint `config.draft_model` (implements `Proposer`).

    `config` is a `SpeculativeConfig` (any object with `draft_model`,
    `num_speculative_tokens`, `draft_num_blocks` and optionally `max_batch_size` will do).
    The draft's vocabulary must be the target's: its size must equal `target_vocab_size`
    and, when `target_tokenizer` is given, token strings must agree; else ValueError.
    A sequence's guesses stop early once the draft's probability of the whole run drops
    below `min_run_probability` (0 disables it: always `max_tokens` guesses).
    """

    def __init__(
        self,
        config: Any,
        *,
        device: str | torch.device,
        dtype: str | torch.dtype,
        target_vocab_size: int,
        target_tokenizer: Any | None = None,
        min_run_probability: float = DEFAULT_MIN_RUN_PROBABILITY,
    ) -> None:
        # Lazy: core -> step -> speculative -> draft_proposer -> core would be a cycle.
        from rlserve.engine.core import EngineCore

        draft_model = getattr(config, "draft_model", None)
        if not isinstance(draft_model, str) or not draft_model:
            raise ParamError(
                "draft_model", f"draft_model must be a checkpoint folder, got {draft_model!r}"
            )
        if isinstance(target_vocab_size, bool) or not isinstance(target_vocab_size, int):
            raise ParamError(
                "target_vocab_size", f"target_vocab_size must be an int, got {target_vocab_size!r}"
            )
        check_number("min_run_probability", min_run_probability, finite=True)
        if not 0.0 <= min_run_probability <= 1.0:
            raise ParamError(
                "min_run_probability",
                f"min_run_probability must be in [0, 1], got {min_run_probability}",
            )
        self.min_run_logprob = math.log(min_run_probability) if min_run_probability else -math.inf
        self.num_speculative_tokens = int(config.num_speculative_tokens)
        max_batch_size = getattr(config, "max_batch_size", DEFAULT_MAX_BATCH_SIZE)
        self.core: EngineCore = EngineCore(
            draft_model,
            device=str(device),
            dtype=_dtype_name(dtype),
            max_num_seqs=max_batch_size,
            num_blocks=getattr(config, "draft_num_blocks", None),
            kv_cache_memory=DRAFT_KV_CACHE_MEMORY,
            enable_prefix_caching=True,
        )
        self.vocab_size = self.core.model.config.vocab_size
        check_same_vocabulary(self.core, draft_model, target_vocab_size, target_tokenizer)
        # Only speed depends on the draft's numerics: its fastest paths are fine.
        model, block_size = self.core.model, self.core.block_manager.block_size
        use_fastest_linears(model)
        reason = unsupported_reason(model)
        if reason is not None:
            log.info("draft decode forwards use the module path: %s", reason)
        step = DecodeStep(model, block_size) if reason is None else None
        self.loop = DraftLoop(self.core.runner, self.core.block_manager, step)

    def propose(self, inputs: list[ProposalInput]) -> list[list[int]]:
        """Up to `input.max_tokens` greedy draft tokens per input, in input order.

        A sequence the draft cannot hold (longer than its context or KV) gets no guesses."""
        _check_inputs(inputs, self.vocab_size)
        items, fits = [], []
        for item in inputs:
            room = self.core.max_model_len - len(item.token_ids)
            max_tokens = min(item.max_tokens, self.num_speculative_tokens, room)
            fits.append(max_tokens >= 1)
            if max_tokens >= 1:
                items.append((item.key, item.token_ids, max_tokens))
        made = iter(self.loop.propose(items, self.min_run_logprob))
        return [next(made) if fit else [] for fit in fits]

    def release(self, key: tuple[str, int]) -> None:
        """The sequence finished: free its draft KV (unknown keys are fine)."""
        self.loop.release(key)

    def reset(self) -> None:
        """Forget all draft KV and the prefix cache (e.g. after a weight or cache reset)."""
        self.loop.reset()

    def stats(self) -> dict[str, int]:
        """KV use, prefix-cache hits, sequences held, forwards and caught-up tokens."""
        bm = self.core.block_manager
        return {
            "kv_blocks_used": bm.num_used_blocks,
            "kv_blocks_total": bm.num_blocks,
            "prefix_cache_hit_tokens": bm.num_hit_tokens,
            "num_sequences": len(self.loop.seqs),
            **self.loop.counters,
        }


def check_same_vocabulary(
    draft: EngineCore, draft_model: str, target_vocab_size: int, target_tokenizer: Any | None
) -> None:
    """ValueError unless the draft's vocabulary is the target's (size, and token strings
    when the target's tokenizer is given)."""
    draft_vocab_size = draft.model.config.vocab_size
    if draft_vocab_size != target_vocab_size:
        raise ParamError(
            "draft_model",
            f"draft_model {draft_model!r} has vocab size {draft_vocab_size}, the target "
            f"{target_vocab_size}: a draft must share the target's tokenizer",
        )
    if target_tokenizer is None:
        return
    size = min(len(draft.tokenizer), len(target_tokenizer))
    if len(draft.tokenizer) != len(target_tokenizer):
        raise ParamError(
            "draft_model",
            f"draft_model {draft_model!r}'s tokenizer has "
            f"{len(draft.tokenizer)} tokens, the target's {len(target_tokenizer)}",
        )
    step = max(1, size // NUM_CHECKED_TOKENS)
    ids = list(range(0, size, step))
    theirs = target_tokenizer.convert_ids_to_tokens(ids)
    ours = draft.tokenizer.convert_ids_to_tokens(ids)
    for token_id, mine, target in zip(ids, ours, theirs, strict=True):
        if mine != target:
            raise ParamError(
                "draft_model",
                f"draft_model {draft_model!r}'s token {token_id} is {mine!r}, the target's "
                f"{target!r}: a draft must share the target's tokenizer",
            )


def _check_inputs(inputs: list[ProposalInput], vocab_size: int) -> None:
    if not isinstance(inputs, list):
        raise ParamError("inputs", f"inputs must be a list of ProposalInput, got {inputs!r}")
    keys = set()
    for item in inputs:
        if not isinstance(item, ProposalInput):
            raise ParamError("inputs", f"inputs must hold ProposalInput, got {item!r}")
        if item.key in keys:
            raise ParamError("key", f"sequence {item.key!r} appears twice in one propose call")
        keys.add(item.key)
        if isinstance(item.max_tokens, bool) or not isinstance(item.max_tokens, int):
            raise ParamError("max_tokens", f"max_tokens must be an int, got {item.max_tokens!r}")
        if item.max_tokens < 1:
            raise ParamError("max_tokens", f"max_tokens must be >= 1, got {item.max_tokens}")
        ids = item.token_ids  # checked at C speed: this runs every step, over whole sequences
        if not (
            isinstance(ids, list)
            and ids
            and set(map(type, ids)) == {int}
            and 0 <= min(ids)
            and max(ids) < vocab_size
        ):
            raise ParamError(
                "token_ids", f"token_ids of {item.key!r} must be ids in [0, {vocab_size})"
            )


def _dtype_name(dtype: str | torch.dtype) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
