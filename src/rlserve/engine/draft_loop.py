"""The draft model's greedy loop: its ModelRunner and BlockManager driven directly.

Each sequence the engine asks guesses for keeps a draft `Sequence` with its own block
table between calls, so a call computes only what changed since the last one: the
tokens the target appended (usually its one sampled token; the last guess too when all
were accepted). The KV of rejected guesses is dropped (`num_computed_tokens` rolls back
to the longest common prefix and the blocks past it are freed). A sequence met for the
first time reuses full blocks of others with the same prefix (the prefix cache hashes
only tokens the target confirmed). All sequences of a call step together: one forward
catches them all up and samples their first guess, then one forward per further guess.
The engine's scheduler, sampler, output processor and detokeniser are not involved: a
greedy guess is an argmax of the fp32 logits. Forwards of a few new tokens (all but the
first of new sequences) run as one native call (`models/decode_step.py`) where the draft
allows it: a decode forward of the bundled draft costs ~0.1 ms that way, ~0.9 ms through
its modules.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from rlserve.engine.block_manager import BlockManager
from rlserve.engine.model_runner import ModelRunner
from rlserve.engine.scheduler import ScheduledBatch
from rlserve.engine.sequence import Sequence
from rlserve.models.decode_step import DecodeStep
from rlserve.sampling_params import SamplingParams

Key = tuple[str, int]
CACHE_KEY = ("draft",)  # the draft's weights never change: one prefix-cache namespace
GREEDY = SamplingParams(temperature=0.0)
# Forwards of at most this many new tokens in all run as one native decode-step call
# (measured, bundled draft, 1 thread: 1 x 8 tokens 0.27 ms against 0.91 through the
# modules, 1 x 42 0.93 vs 1.43, 4 x 42 3.6 vs 3.1); more (new sequences' prompts) take
# the module path, whose GEMMs win at prefill sizes.
MAX_NATIVE_ROWS = 64


class DraftLoop:
    """Greedy draft tokens for many sequences at once over the draft's own paged KV."""

    def __init__(
        self, runner: ModelRunner, block_manager: BlockManager, decode_step: DecodeStep | None
    ) -> None:
        self.runner = runner
        self.block_manager = block_manager
        self.decode_step = decode_step  # runs the few-token forwards, if given
        self.seqs: OrderedDict[Key, Sequence] = OrderedDict()  # least recently used first
        self.confirmed: dict[Key, int] = {}  # tokens the target confirmed, per sequence
        self.counters = {
            "draft_forwards": 0,
            "draft_native_forwards": 0,
            "draft_catch_up_tokens": 0,
        }

    def propose(
        self, items: list[tuple[Key, list[int], int]], min_run_logprob: float
    ) -> list[list[int]]:
        """Up to `max_tokens` greedy tokens after `token_ids`, for each (key, token_ids,
        max_tokens); a run stops once its summed logprob falls below `min_run_logprob`
        (the token that crossed it is kept). Sequences that do not fit the KV together
        run in later rounds (evicting earlier ones); one that fits alone gets none."""
        guesses: list[list[int]] = [[] for _ in items]
        pending = list(range(len(items)))
        while pending:
            admitted: dict[int, Sequence] = {}
            deferred = []
            for i in pending:
                key, ids, max_tokens = items[i]
                protected = {items[j][0] for j in admitted}
                seq = self._catch_up(key, ids, max_tokens, protected)
                if seq is None:
                    deferred.append(i)
                else:
                    admitted[i] = seq
            if not admitted:
                break
            self._run(admitted, items, guesses, min_run_logprob)
            pending = deferred
        return guesses

    def _run(
        self,
        seqs: dict[int, Sequence],
        items: list[tuple[Key, list[int], int]],
        guesses: list[list[int]],
        min_run_logprob: float,
    ) -> None:
        """Step `seqs` (item index -> sequence) together until their runs end."""
        active, first = list(seqs), True
        run_logprob = dict.fromkeys(seqs, 0.0)
        while active:
            batch = [seqs[i] for i in active]
            tokens, logprobs = self._forward(batch, first, min_run_logprob > -math.inf)
            still = []
            for i, seq, token, logprob in zip(active, batch, tokens, logprobs, strict=True):
                if first:  # its tokens are all computed now: the target's, hashable
                    self.block_manager.cache_full_blocks(seq, CACHE_KEY)
                guesses[i].append(token)
                seq.token_ids.append(token)
                run_logprob[i] += logprob
                if len(guesses[i]) < items[i][2] and run_logprob[i] >= min_run_logprob:
                    still.append(i)  # its slots were reserved by _catch_up
            active, first = still, False

    def release(self, key: Key) -> None:
        """Free the blocks held for `key` (unknown keys are fine)."""
        seq = self.seqs.pop(key, None)
        self.confirmed.pop(key, None)
        if seq is not None:
            self.block_manager.free(seq)

    def reset(self) -> None:
        """Free every sequence and forget the prefix cache."""
        for key in list(self.seqs):
            self.release(key)
        self.block_manager.reset_prefix_cache()

    def _catch_up(
        self, key: Key, ids: list[int], max_tokens: int, protected: set[Key]
    ) -> Sequence | None:
        """The draft sequence of `key` holding `ids`, with KV slots for the tokens it
        has not computed yet and its guesses but the last; None (holding nothing) when
        it cannot get them even after evicting the sequences not `protected`."""
        seq = self.seqs.get(key)
        if seq is not None and ids[: self.confirmed[key]] != seq.token_ids[: self.confirmed[key]]:
            self.release(key)  # not a continuation of what the target confirmed
            seq = None
        cached: tuple[list[int], list[bytes]] = ([], [])
        if seq is None:
            seq = Sequence(key[0], key[1], ids, GREEDY, seed=0)
            cached = self.block_manager.match_prefix(seq, CACHE_KEY)
        else:
            common = _common_prefix(seq.token_ids, ids)
            seq.num_computed_tokens = min(seq.num_computed_tokens, common, len(ids) - 1)
            seq.token_ids = list(ids)
            self.block_manager.trim(seq, seq.num_computed_tokens)
            self.seqs.move_to_end(key)
        self.seqs[key], self.confirmed[key] = seq, len(ids)
        hit_tokens = len(cached[0]) * self.block_manager.block_size
        num_new = len(ids) - seq.num_computed_tokens - hit_tokens + max_tokens - 1
        while not self.block_manager.allocate_slots(seq, num_new, cached):
            victim = next((k for k in self.seqs if k != key and k not in protected), None)
            if victim is None:
                self.release(key)
                return None
            self.release(victim)
        return seq

    def _forward(
        self, seqs: list[Sequence], first: bool, want_logprobs: bool
    ) -> tuple[list[int], list[float]]:
        """One forward of `seqs` (their uncomputed tokens); each one's greedy next token
        and its logprob (0.0 unless `want_logprobs`)."""
        num_new = [seq.num_tokens - seq.num_computed_tokens for seq in seqs]
        bm = self.block_manager
        copies, bm.pending_copies = bm.pending_copies, []
        self.runner.copy_blocks(copies)
        if self.decode_step is not None and sum(num_new) <= MAX_NATIVE_ROWS:
            tokens, logprobs = self._native_forward(seqs, num_new)
            self.counters["draft_native_forwards"] += 1
        else:
            tokens, logprobs = self._module_forward(seqs, num_new, want_logprobs)
        for seq, n in zip(seqs, num_new, strict=True):
            seq.num_computed_tokens += n
        self.counters["draft_forwards"] += 1
        if first:
            self.counters["draft_catch_up_tokens"] += sum(num_new)
        return tokens, logprobs

    def _native_forward(
        self, seqs: list[Sequence], num_new: list[int]
    ) -> tuple[list[int], list[float]]:
        """Every new token as one row of one native decode-step call, each sequence's in
        order (a row's K/V is written before the rows after it attend); each sequence's
        last row gives its guess."""
        assert self.decode_step is not None
        token_ids, positions, tables, last = [], [], [], []
        for seq, n in zip(seqs, num_new, strict=True):
            first = seq.num_computed_tokens
            token_ids += seq.token_ids[first : first + n]
            positions += range(first, first + n)
            tables += [seq.block_table] * n
            last.append(len(token_ids) - 1)
        tokens, logprobs = self.decode_step.run(token_ids, positions, tables)
        return [tokens[r] for r in last], [logprobs[r] for r in last]

    def _module_forward(
        self, seqs: list[Sequence], num_new: list[int], want_logprobs: bool
    ) -> tuple[list[int], list[float]]:
        """The ModelRunner's forward of `seqs`: greedy tokens and their logprobs."""
        batch = ScheduledBatch(list(seqs), num_new, [])
        logits = self.runner.run(batch, [True] * len(seqs), {}).sample_logits
        best, tokens = logits.max(dim=-1)
        if not want_logprobs:
            return tokens.tolist(), [0.0] * len(seqs)
        # log p(best) = -log sum exp(logits - best)
        return tokens.tolist(), (logits - best[:, None]).exp_().sum(dim=-1).log_().neg_().tolist()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])
