"""A Sequence is one sample being generated: its tokens, KV blocks and outputs so far."""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum

from rlserve.engine.detokenizer import IncrementalDetokenizer
from rlserve.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Prompt + generated tokens of one sample, and where its KV lives.

    `num_computed_tokens` tokens have their KV in the blocks of `block_table`;
    `block_hashes[i]` is the prefix-cache hash of full block i.
    A sequence with `num_forks` > 0 is the parent of an n > 1 group: its prompt is
    prefilled once, then it forks into the n samples (which share the prompt's blocks).
    """

    def __init__(
        self,
        request_id: str,
        index: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        seed: int,
        lora_name: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.index = index  # which of the request's n samples
        self.params = params
        self.seed = seed
        self.lora_name = lora_name
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served by the prefix cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []
        # (cache key, hashes of its full blocks under that key): see BlockManager._hash_chain
        self.hash_chain: tuple[Hashable, list[bytes]] = (None, [])
        self.status = SequenceStatus.WAITING
        self.num_forks = 0
        self.score_only = False  # finish after the prefill, sampling nothing
        self.cacheable = True  # False once its KV mixes weight versions
        self.keep_logits = False  # score-only: also keep the raw logits of every position
        self.logits: list = []  # chunks of fp32 logits, when keep_logits
        self.num_prompt_rows_done = 0  # prompt positions whose logprobs are recorded
        self.logprobs: list[float] = []
        self.sampling_logprobs: list[float] = []
        self.top_logprobs: list[dict[int, float]] = []
        self.weight_versions: list[int] = []
        self.prompt_logprobs: list[float | None] = []
        self.prompt_top_logprobs: list[dict[int, float] | None] = []
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.text = ""  # output text (stop strings already cut)
        self.detokenizer = IncrementalDetokenizer()
        self.num_emitted_tokens = 0  # how much step() has already reported
        self.num_emitted_chars = 0
        self.finish_emitted = False
        self.spec_verify_steps = 0  # speculation: steps that verified guesses for it
        self.spec_proposed_tokens = 0  # guesses verified for this sample
        self.spec_accepted_tokens = 0  # and those that became its output tokens

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.score_only or self.params.prompt_logprobs is not None

    @property
    def num_prompt_logit_rows(self) -> int:
        """Prompt positions whose logits are needed (the last one only for raw logits)."""
        return self.num_prompt_tokens - (0 if self.keep_logits else 1)

    def fork(self, index: int) -> Sequence:
        """A sibling sample sharing this sequence's prompt and computed KV (forks are made
        before any output token)."""
        child = Sequence(
            self.request_id, index, self.token_ids, self.params, self.seed, self.lora_name
        )
        child.num_prompt_tokens = self.num_prompt_tokens
        child.num_computed_tokens = self.num_computed_tokens
        child.num_cached_tokens = self.num_cached_tokens
        child.block_table = list(self.block_table)
        child.block_hashes = list(self.block_hashes)
        child.hash_chain = (self.hash_chain[0], list(self.hash_chain[1]))
        child.status = self.status
        return child

    def reset_for_recompute(self) -> None:
        """Preempted: its KV is dropped and will be recomputed from its tokens."""
        self.num_computed_tokens = 0
        self.block_table = []
        self.block_hashes = []
        self.status = SequenceStatus.WAITING
