"""One engine step's work on a scheduled batch: forward, book, fork, sample.

A failure is isolated at each stage: if the forward or the sampling call raises, only the
sequences that fail on their own fail their requests (see failures.py), and a sequence whose
own booking raises fails only its request. `fail(seq, error)` aborts a request alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlserve.config import SpeculativeConfig
from rlserve.engine.block_manager import BlockManager
from rlserve.engine.failures import run_isolating
from rlserve.engine.model_runner import ModelRunner, RunnerOutput
from rlserve.engine.output_processor import OutputProcessor
from rlserve.engine.penalties import penalty_row
from rlserve.engine.policy import Policy
from rlserve.engine.prefix_constraint import TokenTexts, allowed_token_ids
from rlserve.engine.request import Request
from rlserve.engine.sampler import SamplerOutput, SamplingRow, noise_seed, sample
from rlserve.engine.scheduler import ScheduledBatch, Scheduler
from rlserve.engine.sequence import Sequence
from rlserve.engine.speculative import SPEC_COUNTERS, Speculator, speculator_for
from rlserve.engine.structured import GrammarCompiler, GrammarMatcher, StructuredOutput

Fail = Callable[[Sequence, Exception], None]


# The counters EngineCore.stats() reports; the step and the core bump them.
COUNTERS = (
    "prompt_tokens_total",
    "prompt_tokens_computed",
    "generated_tokens",
    "requests_finished",
    "steps",
    *SPEC_COUNTERS,
)


class StepRunner:
    """Runs scheduled batches for `EngineCore.step`; shares the core's components."""

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        outputs: OutputProcessor,
        token_texts: TokenTexts,
        policy: Policy,
        requests: dict[str, Request],
        counters: dict[str, int],
        fail: Fail,
        speculative: SpeculativeConfig | None = None,
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.block_manager: BlockManager = scheduler.block_manager
        self.outputs = outputs
        self.token_texts = token_texts
        self.policy = policy
        self.requests = requests  # the core's own dict: forks join their request here
        self.counters = counters
        self.fail = fail
        self.grammars = GrammarCompiler(  # its tokenizer index is built on first use
            outputs.tokenizer, runner.model.config.vocab_size, outputs.eos_token_ids
        )
        self.speculator: Speculator | None = speculator_for(speculative, self)

    def run(self, batch: ScheduledBatch) -> list[Sequence]:
        """Forward one batch and apply its results; returns the sequences that progressed.
        If the forward raises, only the sequences that fail on their own fail their
        requests; the others go on in smaller groups (see failures.py: a rerun writes the
        same KV into the same slots, and nothing was booked yet)."""
        if self.speculator is not None:
            self.speculator.propose(batch)
        # Copy-on-write first, outside the failure handling: every rerun needs the copies.
        self.runner.copy_blocks(batch.block_copies)
        samples = [
            seq.num_computed_tokens + n == seq.num_tokens and not seq.score_only
            for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True)
        ]

        def forward(group: list[int]) -> tuple[ScheduledBatch, RunnerOutput]:
            part = batch.subset(group)
            return part, self.runner.run(part, [samples[i] for i in group], self.policy.adapters)

        done, culprits = run_isolating(list(range(len(batch))), forward)
        for i, error in culprits:
            self.fail(batch.seqs[i], error)
        progressed = []
        self.counters["steps"] += bool(done)
        for _, (part, result) in done:
            progressed += self._apply(part, result)
        return progressed

    def _apply(self, batch: ScheduledBatch, result: RunnerOutput) -> list[Sequence]:
        """Book a forward's results and sample; returns the sequences that progressed."""
        progressed, drafts = [], result.draft_logits
        for i, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            # Finished: aborted with a sibling of its n > 1 group that failed; drafts:
            # speculating sequences book their forward as they verify it.
            if seq.is_finished or (drafts and i in drafts):
                continue
            try:
                if self.apply_forward(seq, num_new, result.prompt_logits.get(i)):
                    progressed.append(seq)
            except Exception as exc:
                self.fail(seq, exc)
        rows, row_seqs = [], []
        for row, i in enumerate(result.sample_seqs):
            if batch.seqs[i].is_finished:  # failed above
                continue
            for seq in self._fork_group(batch.seqs[i]):
                rows.append(row)
                row_seqs.append(seq)
        if row_seqs:
            progressed.extend(self._sample(_take_rows(result.sample_logits, rows), row_seqs))
        if drafts and self.speculator is not None:
            progressed += self.speculator.verify(batch, drafts, self._append_token, self.fail)
        return progressed

    def apply_forward(
        self, seq: Sequence, num_new: int, prompt_logits: tuple[int, torch.Tensor] | None
    ) -> bool:
        """Book one sequence's forward results; True when that finished it (score-only)."""
        if seq.num_computed_tokens < seq.num_prompt_tokens:
            self.counters["prompt_tokens_computed"] += min(
                num_new, seq.num_prompt_tokens - seq.num_computed_tokens
            )
        seq.num_computed_tokens += num_new
        if seq.cacheable:
            self.block_manager.cache_full_blocks(seq, self.policy.cache_key(seq))
        if prompt_logits is not None:
            self.outputs.record_prompt_logprobs(seq, *prompt_logits)
        if seq.score_only and seq.num_computed_tokens == seq.num_tokens:
            seq.finish_reason = "stop"
            self.scheduler.finish(seq)
            return True
        return False

    def _fork_group(self, seq: Sequence) -> list[Sequence]:
        """A prefilled n > 1 parent becomes n samples sharing its prompt blocks."""
        if seq.num_forks == 0:
            return [seq]
        children = []
        for index in range(1, seq.num_forks + 1):
            child = seq.fork(index)
            self.block_manager.fork(seq, child)
            children.append(child)
        seq.num_forks = 0
        self.requests[seq.request_id].seqs.extend(children)
        self.scheduler.add_forks(seq, children)
        return [seq, *children]

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[Sequence]:
        """Sample one token for each of `seqs` (row j of `logits` is seqs[j]'s); returns
        those that got one. A sequence whose row cannot be sampled fails its request."""
        rows: dict[int, SamplingRow] = {}
        for j, seq in enumerate(seqs):
            try:
                rows[j] = self._sampling_row(seq)
            except Exception as exc:
                self.fail(seq, exc)
        self._mask_grammars(rows, seqs, logits.device)
        done = []
        for j, out, k in self._sample_rows(logits, rows, seqs):
            seq = seqs[j]
            if seq.is_finished:  # a sibling of an n > 1 group failed
                continue
            try:
                if out.errors[k] is not None:
                    raise ValueError(f"cannot sample: {out.errors[k]}")
                self._append_token(seq, out, k)
                done.append(seq)
            except Exception as exc:
                self.fail(seq, exc)
        return done

    def _sampling_row(self, s: Sequence) -> SamplingRow:
        return SamplingRow(
            temperature=s.params.temperature,
            top_k=s.params.top_k,
            top_p=s.params.top_p,
            min_p=s.params.min_p,
            noise_seed=noise_seed(s.seed, s.index, s.num_tokens),
            banned_token_ids=self.outputs.banned_token_ids(s),
            num_top_logprobs=s.params.logprobs or 0,
            allowed_token_ids=self._allowed_token_ids(s),
            penalties=penalty_row(s),
        )

    def _sample_rows(
        self, logits: torch.Tensor, rows: dict[int, SamplingRow], seqs: list[Sequence]
    ) -> list[tuple[int, SamplerOutput, int]]:
        """(seq index, sampler output, row in it) for every row sampled. All rows go in one
        call (rows with nothing to sample come back in its `errors`); if it raises, the
        rows that raise alone fail and the others are sampled in groups (sampling is
        row-wise: they get exactly the same tokens)."""
        order = [j for j in rows if not seqs[j].is_finished]
        if not order:
            return []

        def run(group: list[int]) -> SamplerOutput:
            return sample(_take_rows(logits, group), [rows[j] for j in group])

        done, culprits = run_isolating(order, run)
        for j, error in culprits:
            self.fail(seqs[j], error)
        return [(j, out, k) for group, out in done for k, j in enumerate(group)]

    def _append_token(self, seq: Sequence, out: SamplerOutput, k: int) -> None:
        seq.token_ids.append(out.token_ids[k])
        seq.logprobs.append(out.logprobs[k])
        seq.sampling_logprobs.append(out.sampling_logprobs[k])
        if out.top_logprobs[k] is not None:
            seq.top_logprobs.append(out.top_logprobs[k])
        seq.weight_versions.append(self.policy.version)
        self.counters["generated_tokens"] += 1
        matcher = self.grammars.running(seq)
        if matcher is not None and out.token_ids[k] not in self.outputs.eos_token_ids:
            matcher.advance(out.token_ids[k])
        self.outputs.check_stop(seq)
        if seq.finish_reason is None and matcher is not None and self._grammar_done(seq, matcher):
            seq.finish_reason = "stop"
        if seq.finish_reason is not None:
            self.scheduler.finish(seq)

    def _grammar_done(self, seq: Sequence, matcher: GrammarMatcher) -> bool:
        """The grammar is complete and only EOS may follow: stop now if EOS cannot be
        sampled next (ignore_eos, min_tokens); else the next token is EOS, as in vLLM."""
        if not matcher.is_stopped:
            return False
        return not self._eos_allowed(seq) or seq.num_output_tokens < seq.params.min_tokens

    def _eos_allowed(self, seq: Sequence) -> bool:
        return bool(self.outputs.eos_token_ids) and not seq.params.ignore_eos

    def _mask_grammars(
        self, rows: dict[int, SamplingRow], seqs: list[Sequence], device: torch.device
    ) -> None:
        """Set the grammar's next-token mask on the rows of constrained sequences."""
        ready, matchers = [], []
        for j in rows:
            structured = _structured(seqs[j])
            if structured is None or seqs[j].is_finished:
                continue
            try:
                matchers.append(self.grammars.follow(seqs[j], structured))
                ready.append(j)
            except Exception as exc:
                self.fail(seqs[j], exc)
        if not ready:
            return
        allow_eos = [self._eos_allowed(seqs[j]) for j in ready]
        masks = self.grammars.masks(matchers, allow_eos, device)
        for mask, j in zip(masks, ready, strict=True):
            rows[j].token_mask = mask

    def _allowed_token_ids(self, seq: Sequence) -> list[int] | None:
        if not seq.params.prefix_choices:
            return None
        # While constrained, every token adds at least one byte: the longest choice's
        # length in tokens is all the output that can matter.
        longest = max(len(c.encode()) for c in seq.params.prefix_choices)
        begin = seq.num_prompt_tokens
        output = self.token_texts.spell(seq.token_ids[begin : begin + longest])
        # An empty list (nothing continues) is refused at admission (dead_end), and the
        # sampler's `errors` catch it should a banned stop id make it so.
        return allowed_token_ids(self.token_texts, seq.params.prefix_choices, output)


def _structured(seq: Sequence) -> StructuredOutput | None:
    return seq.params.structured


def _take_rows(values: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """values[rows], without copying when that is all of them in order."""
    return values if rows == list(range(len(values))) else values[rows]
