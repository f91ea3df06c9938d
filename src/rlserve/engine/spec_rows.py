"""Which sequences may speculate, their guesses checked, the sampling rows that verify
them, the proposer a config names, and when speculating pays (measured seconds per
token, per batch size)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import torch

from rlserve._checks import is_int
from rlserve.config import SpeculativeConfig
from rlserve.engine.ngram_proposer import NgramProposer
from rlserve.engine.output_processor import OutputProcessor
from rlserve.engine.penalties import uses_processing
from rlserve.engine.proposer import ProposalInput, Proposer
from rlserve.engine.sampler import SamplingRow, noise_seed
from rlserve.engine.sequence import Sequence

log = logging.getLogger(__name__)


def can_speculate(seq: Sequence) -> bool:
    """Whether `seq`'s next token may be guessed: it decodes, and its sampling depends
    on nothing that changes with each token (penalties, bad words, grammars,
    prefix_choices) nor needs one step per token (an n > 1 parent, score-only)."""
    p = seq.params
    return not (
        seq.num_forks
        or seq.score_only
        or seq.keep_logits
        or p.prefix_choices
        or p.structured is not None
        or uses_processing(p)
    )


def draft_rows(seq: Sequence, num_rows: int, outputs: OutputProcessor) -> list[SamplingRow]:
    """Row j as decoding would sample it once the j guesses before it are accepted:
    position num_tokens + j, num_output_tokens + j output tokens so far."""
    p = seq.params
    out, n = seq.num_output_tokens, seq.num_tokens
    return [
        SamplingRow(
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            min_p=p.min_p,
            noise_seed=noise_seed(seq.seed, seq.index, n + j),
            banned_token_ids=outputs.banned_token_ids(seq, out + j),
            num_top_logprobs=p.logprobs or 0,
        )
        for j in range(num_rows)
    ]


def checked_guesses(
    proposer: Proposer, inputs: list[ProposalInput], vocab_size: int
) -> list[list[int]]:
    """The proposer's guesses with their token ids checked: a proposer's failure or bad
    output costs speed (those sequences decode as usual), never a request."""
    try:
        guesses = proposer.propose(inputs)
        if len(guesses) != len(inputs):
            raise ValueError(f"{len(guesses)} guess lists for {len(inputs)} sequences")
    except Exception:
        log.warning("the speculative proposer failed; this step decodes", exc_info=True)
        proposer.reset()
        return [[] for _ in inputs]
    return [list(g) if all(is_int(t) and 0 <= t < vocab_size for t in g) else [] for g in guesses]


def make_proposer(
    config: SpeculativeConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
    target_vocab_size: int,
    target_tokenizer: Any | None = None,
) -> Proposer:
    """The proposer `config.method` names; a draft's vocabulary is checked against the
    target's (`target_tokenizer`: its token strings too)."""
    if config.method == "ngram":
        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    # Imported here: the draft proposer runs an inner EngineCore (core -> step -> here).
    from rlserve.engine.draft_proposer import DraftProposer

    return DraftProposer(
        config,
        device=device,
        dtype=dtype,
        target_vocab_size=target_vocab_size,
        target_tokenizer=target_tokenizer,
    )


# --------------------------------------------------------------------------- when it pays

NUM_BUCKETS = 5  # running decode sequences: 1, 2-3, 4-7, 8-15, 16+
PROBE_STEPS = 2  # measured steps per mode before a bucket decides, and per re-probe
REPROBE_EVERY = 64  # decisions in a bucket between re-probes of the mode it turned down
COST_EMA = 0.2  # weight of the newest sample in a bucket's cost (after the first few)
MAX_JUMP = 4.0  # a step's seconds are clipped to this many times the running mean (a stall)


def bucket_of(num_decoding: int) -> int:
    """The batch-size bucket of `num_decoding` running decode sequences."""
    return min(num_decoding.bit_length(), NUM_BUCKETS) - 1


class CostRule(Protocol):
    """Decides from measured step times whether speculating pays at a batch size."""

    def pays(self, num_decoding: int) -> bool: ...

    def record(self, num_decoding: int, speculated: bool, seconds: float, tokens: int) -> None: ...


class AlwaysPays:
    """A cost rule that always speculates (tests, or where timing must not matter)."""

    def pays(self, num_decoding: int) -> bool:
        return True

    def record(self, num_decoding: int, speculated: bool, seconds: float, tokens: int) -> None:
        pass


class MeasuredCosts:
    """Speculates in a batch-size bucket only while its measured seconds per appended
    token with speculation are at most those of plain decode steps.

    A bucket first runs `probe_steps` measured steps speculating, then as many plain;
    then it picks the cheaper mode, and every `reprobe_every` decisions runs the other
    one `probe_steps` times again (costs drift with load and acceptance). A mode's cost
    is its running seconds over its running tokens (a ratio of sums: a mean of per-step
    ratios would weigh a verify step that kept one token like one that kept five, and
    overstate speculation's cost ~2x). Only speed depends on it: outputs are the same
    either way."""

    def __init__(self, probe_steps: int = PROBE_STEPS, reprobe_every: int = REPROBE_EVERY):
        if probe_steps < 1 or reprobe_every <= probe_steps:
            raise ValueError("need probe_steps >= 1 and reprobe_every > probe_steps")
        self.probe_steps, self.reprobe_every = probe_steps, reprobe_every
        # per bucket and mode ([speculating, plain]): running seconds and tokens per step
        self.seconds = [[0.0, 0.0] for _ in range(NUM_BUCKETS)]
        self.tokens = [[0.0, 0.0] for _ in range(NUM_BUCKETS)]
        self.samples = [[0, 0] for _ in range(NUM_BUCKETS)]
        self.decisions = [0] * NUM_BUCKETS

    def cost(self, bucket: int, speculated: bool) -> float | None:
        """Seconds per token of a mode in a bucket (None: not measured yet)."""
        mode = 0 if speculated else 1
        if not self.samples[bucket][mode]:
            return None
        return self.seconds[bucket][mode] / self.tokens[bucket][mode]

    def pays(self, num_decoding: int) -> bool:
        """Whether the next step of this batch size should speculate."""
        b = bucket_of(num_decoding)
        on, off = self.samples[b]
        if on < self.probe_steps:
            return True
        if off < self.probe_steps:
            return False
        decision, self.decisions[b] = self.decisions[b], self.decisions[b] + 1
        cheaper = self.cost(b, True) <= self.cost(b, False)  # type: ignore[operator]
        probing = decision % self.reprobe_every >= self.reprobe_every - self.probe_steps
        return not cheaper if probing else cheaper

    def record(self, num_decoding: int, speculated: bool, seconds: float, tokens: int) -> None:
        """One measured step: `tokens` appended in `seconds`."""
        b, mode = bucket_of(num_decoding), 0 if speculated else 1
        self.samples[b][mode] += 1
        n = self.samples[b][mode]
        if n > 1:  # a stall (a paused caller) counts as MAX_JUMP running steps at most
            seconds = min(seconds, MAX_JUMP * self.seconds[b][mode])
        weight = max(COST_EMA, 1 / n)  # a mean of the first samples, then an EMA
        self.seconds[b][mode] += weight * (seconds - self.seconds[b][mode])
        self.tokens[b][mode] += weight * (tokens - self.tokens[b][mode])


class StepTimer:
    """Times pure decode steps from one step's start to the next, with the tokens they
    appended. A step is measured only when the next batch holds no new sequence: one
    after an idle engine would count the idle time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._now = 0.0  # when the step being run started (set by `finish`)
        self._last: tuple[float, bool, int, list[tuple[Sequence, int]]] | None = None

    def finish(self, seqs: list[Sequence]) -> tuple[int, bool, float, int] | None:
        """At a step's start: (decoding sequences, speculated, seconds, tokens) of the
        step before when it was measurable, else None."""
        now, last = self.clock(), self._last
        self._last, self._now = None, now
        if last is None:
            return None
        start, speculated, num, tracked = last
        before = {id(seq) for seq, _ in tracked}
        if not all(id(seq) in before for seq in seqs):
            return None
        tokens = sum(seq.num_tokens - n for seq, n in tracked)
        return (num, speculated, now - start, tokens) if tokens > 0 else None

    def begin(self, seqs: list[Sequence], speculated: bool) -> None:
        """This step (started at the last `finish`) decodes `seqs` and nothing else."""
        self._last = (self._now, speculated, len(seqs), [(s, s.num_tokens) for s in seqs])
