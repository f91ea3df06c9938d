"""Speculative decoding: guess a few tokens per sequence, verify them in one forward.

Before a step's forward, `Speculator.propose` asks the proposer for up to k guesses
d1..dk for each eligible decoding sequence and schedules [last token, d1..dk] as k + 1
rows over its paged KV; their K/V are written first, then each row attends as a decode
does, to its own length (the paged decode kernel: one call per layer for the whole batch;
measured 1.09x faster at batch 1, 1.04x at 16, than prefill spans through SDPA with
gathers, and the same attention numerics as decoding). After the forward, `verify`
samples row j exactly as decoding without speculation would sample that position (the same
`SamplingRow`: temperature, top-k/p, min-p, min_tokens bans, and the same
`noise_seed(seed, index, position)`), appends the token through the normal path (stop
ids, stop strings, EOS, max_tokens, detokeniser), and goes on to row j + 1 only while the
token equals d_{j+1}. So every token, logprob and weight version is the target's own.

This is the standard rejection rule min(1, p/q) with a one-hot draft distribution q at
the guess (every proposer here is deterministic): d is accepted with probability p(d),
and on rejection the token is distributed as p without d, renormalised, so outputs
follow the target's distribution exactly.

KV: the rows of rejected guesses are not counted (`num_computed_tokens` covers only
accepted inputs), blocks past what the sequence needs are freed at once, and the prefix
cache hashes only blocks of accepted tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from rlserve.config import SpeculativeConfig
from rlserve.engine.block_manager import BlockManager
from rlserve.engine.failures import run_isolating
from rlserve.engine.output_processor import OutputProcessor
from rlserve.engine.proposer import ProposalInput, Proposer
from rlserve.engine.sampler import SamplerOutput, sample
from rlserve.engine.scheduler import ScheduledBatch
from rlserve.engine.sequence import Sequence
from rlserve.engine.spec_rows import (
    CostRule,
    MeasuredCosts,
    StepTimer,
    can_speculate,
    checked_guesses,
    draft_rows,
    make_proposer,
)

if TYPE_CHECKING:
    from rlserve.engine.policy import Policy
    from rlserve.engine.step import StepRunner

Append = Callable[[Sequence, SamplerOutput, int], None]
Fail = Callable[[Sequence, Exception], None]

# The counters EngineCore.stats() reports for speculation.
SPEC_COUNTERS = (
    "spec_proposed_tokens",  # guesses verified
    "spec_accepted_tokens",  # guesses that became output tokens
    "spec_steps",  # steps that verified guesses
    "spec_sequence_steps",  # (sequence, step) pairs that verified guesses (vLLM: drafts)
)
EMA_WEIGHT = 0.1  # of the newest step in the running acceptance
PROBE_EVERY = 64  # steps between probes while acceptance keeps speculation off
# Decode steps a batch that shrank below max_batch_size waits before speculating: the
# sequences left are new to a draft, which must first compute their whole prompts, and a
# tail that ends within a step or two pays that for nothing (measured, bench/speculative.py
# draft pair T=1, batch 16: 0.90-0.95x without the wait).
SETTLE_STEPS = 2


def speculator_for(config: SpeculativeConfig | None, step: StepRunner) -> Speculator | None:
    """The speculator of an engine step (None: speculation off); it releases proposer
    state as sequences finish."""
    if config is None:
        return None
    runner = step.runner
    proposer = make_proposer(
        config,
        device=runner.device,
        dtype=runner.kv_dtype,
        target_vocab_size=runner.model.config.vocab_size,
        target_tokenizer=step.outputs.tokenizer,
    )
    spec = Speculator(
        config,
        proposer,
        step.block_manager,
        step.outputs,
        step.policy,
        step.counters,
        step.scheduler.max_num_batched_tokens,
        runner.model.config.vocab_size,
    )
    step.scheduler.on_finish = spec.release
    return spec


class Speculator:
    """Proposes guesses into scheduled batches and verifies them after the forward.

    It speculates while at most `config.max_batch_size` sequences decode, the running
    acceptance is at least `config.min_acceptance`, and `costs` (timed by `clock`) finds
    it cheaper per token than plain decoding at that batch size."""

    def __init__(
        self,
        config: SpeculativeConfig,
        proposer: Proposer,
        block_manager: BlockManager,
        outputs: OutputProcessor,
        policy: Policy,
        counters: dict[str, int],
        max_num_batched_tokens: int,
        vocab_size: int,
        costs: CostRule | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.proposer = proposer
        self.block_manager = block_manager
        self.outputs = outputs
        self.policy = policy
        self.counters = counters
        self.max_num_batched_tokens = max_num_batched_tokens
        self.vocab_size = vocab_size
        self.acceptance = 1.0  # running (EMA) accepted / proposed
        self.steps_off = 0  # steps skipped for low acceptance since the last probe
        self.settle = 0  # decode steps still to wait after the batch fell under the cap
        self._version = policy.version
        self.costs: CostRule = MeasuredCosts() if costs is None else costs
        self.timer = StepTimer(clock)

    def release(self, seq: Sequence) -> None:
        """`seq` finished or was aborted."""
        self.proposer.release((seq.request_id, seq.index))

    def reset(self) -> None:
        """Drop proposer state (weights or the prefix cache changed)."""
        self.proposer.reset()

    def propose(self, batch: ScheduledBatch) -> None:
        """Give eligible decoding sequences of `batch` their guesses (batch.drafts) and the
        KV slots to verify them; a sequence that gets none decodes as usual."""
        if self.policy.version != self._version:  # draft state of the old weights
            self._version = self.policy.version
            self.proposer.reset()
        measured = self.timer.finish(batch.seqs)
        if measured is not None:
            self.costs.record(*measured)
        decoding = [
            i
            for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True))
            if n == 1
            and seq.num_computed_tokens + 1 == seq.num_tokens
            and seq.num_computed_tokens >= seq.num_prompt_tokens
        ]
        speculate = bool(decoding) and self._worth_it(len(decoding))
        if decoding and len(decoding) == len(batch):  # a pure decode step: timed
            self.timer.begin(batch.seqs, speculate)
        if not speculate:
            return
        chosen, inputs = [], []
        for i in decoding:
            seq = batch.seqs[i]
            room = self._room(seq)
            if room > 0 and can_speculate(seq):
                chosen.append(i)
                key = (seq.request_id, seq.index)
                inputs.append(ProposalInput(key, seq.token_ids, seq.num_prompt_tokens, room))
        if not inputs:
            return
        guesses = checked_guesses(self.proposer, inputs, self.vocab_size)
        budget = self.max_num_batched_tokens - sum(batch.num_new_tokens)
        drafts: list[list[int] | None] = [None] * len(batch)
        for i, guess, given in zip(chosen, guesses, inputs, strict=True):
            guess = list(guess[: min(given.max_tokens, budget)])
            seq = batch.seqs[i]
            if not guess:
                continue
            if not self.block_manager.allocate_slots(seq, 1 + len(guess)):
                continue  # no room: it decodes one token, as it would anyway
            drafts[i] = guess
            batch.num_new_tokens[i] = 1 + len(guess)
            budget -= len(guess)
        batch.block_copies += self.block_manager.pending_copies
        self.block_manager.pending_copies = []
        if any(d is not None for d in drafts):
            batch.drafts = drafts

    def _worth_it(self, num_decoding: int) -> bool:
        """Speculation pays while decode is overhead bound (few sequences), guesses are
        often right (while acceptance is low it is probed every PROBE_EVERY steps) and
        the measured cost per token says so; a batch that just fell under the size cap
        waits SETTLE_STEPS steps first."""
        if num_decoding > self.config.max_batch_size:
            self.settle = SETTLE_STEPS
            return False
        if self.settle:
            self.settle -= 1
            return False
        if self.acceptance < self.config.min_acceptance:
            self.steps_off += 1
            if self.steps_off < PROBE_EVERY:
                return False
            self.steps_off = 0
        return self.costs.pays(num_decoding)

    def _room(self, seq: Sequence) -> int:
        """How many guesses `seq` may verify: k, less what max_tokens and the context
        length leave (the token after the guesses is appended too)."""
        left = min(
            seq.params.max_tokens - seq.num_output_tokens,
            self.outputs.max_model_len - seq.num_tokens,
        )
        return min(self.config.num_speculative_tokens, left - 1)

    def verify(
        self,
        batch: ScheduledBatch,
        logits: dict[int, torch.Tensor],
        append: Append,
        fail: Fail,
    ) -> list[Sequence]:
        """Sample the rows of every speculating sequence of `batch` and append tokens
        while they equal the guesses; returns the sequences that progressed."""
        assert batch.drafts is not None
        order = [i for i in logits if not batch.seqs[i].is_finished]
        if not order:
            return []
        rows = {i: draft_rows(batch.seqs[i], len(logits[i]), self.outputs) for i in order}

        def run(group: list[int]) -> SamplerOutput:
            values = torch.cat([logits[i] for i in group]) if len(group) > 1 else logits[group[0]]
            return sample(values, [row for i in group for row in rows[i]])

        done, culprits = run_isolating(order, run)
        for i, error in culprits:
            fail(batch.seqs[i], error)
        progressed = []
        proposed = accepted = 0
        for group, out in done:
            at = 0
            for i in group:
                seq, guess = batch.seqs[i], batch.drafts[i] or []
                proposed += len(guess)
                try:
                    got = self._accept(seq, guess, out, at, append)
                except Exception as exc:
                    fail(seq, exc)
                    got = -1
                if got >= 0:
                    progressed.append(seq)
                    accepted += got
                at += len(guess) + 1
        self._book(len(order), proposed, accepted)
        return progressed

    def _accept(
        self, seq: Sequence, guess: list[int], out: SamplerOutput, at: int, append: Append
    ) -> int:
        """Append tokens from rows at, at + 1, ... while they equal the guesses; returns
        how many guesses became output tokens."""
        seq.spec_verify_steps += 1
        seq.spec_proposed_tokens += len(guess)
        accepted = 0
        for j in range(len(guess) + 1):
            if out.errors[at + j] is not None:
                raise ValueError(f"cannot sample: {out.errors[at + j]}")
            # Row j's input (the last token, or guess j that equalled its token) is valid
            # KV now, as a decode step books its input before sampling.
            seq.num_computed_tokens += 1
            if seq.cacheable:
                self.block_manager.cache_full_blocks(seq, self.policy.cache_key(seq))
            append(seq, out, at + j)
            if j == len(guess) or out.token_ids[at + j] != guess[j]:
                break
            accepted += 1
            if seq.is_finished:
                break
        seq.spec_accepted_tokens += accepted
        if not seq.is_finished:
            self.block_manager.trim(seq, seq.num_tokens)
        return accepted

    def _book(self, num_seqs: int, proposed: int, accepted: int) -> None:
        c = self.counters
        c["spec_steps"] += 1
        c["spec_sequence_steps"] += num_seqs
        c["spec_proposed_tokens"] += proposed
        c["spec_accepted_tokens"] += accepted
        if proposed:
            rate = accepted / proposed
            self.acceptance += EMA_WEIGHT * (rate - self.acceptance)
