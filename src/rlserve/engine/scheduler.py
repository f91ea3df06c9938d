"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step, running sequences go first (one decode token each, or the next chunk of a
prefill), then waiting ones are admitted while the token budget
(`max_num_batched_tokens`), the sequence budget (`max_num_seqs`) and free KV blocks allow.
Long prompts are prefilled in chunks. When a running sequence needs a block and none is
free, the newest running sequence is preempted: its blocks are freed and it goes back to
the front of the queue, to be recomputed later (prefix-cache hits make that cheap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from rlserve.engine.block_manager import BlockManager
from rlserve.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    # Speculation (engine/speculative.py): per sequence the guessed tokens it verifies
    # after its last token (num_new_tokens counts them), or None; None when none does.
    drafts: list[list[int] | None] | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def subset(self, rows: list[int]) -> ScheduledBatch:
        """The sequences at `rows`, ascending (block copies are not repeated)."""
        if len(rows) == len(self.seqs):
            return self
        drafts = None if self.drafts is None else [self.drafts[i] for i in rows]
        return ScheduledBatch(
            [self.seqs[i] for i in rows], [self.num_new_tokens[i] for i in rows], [], drafts
        )


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        cache_key: Callable[[Sequence], Hashable],
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.cache_key = cache_key
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.on_finish: Callable[[Sequence], None] | None = None  # speculation's release

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def num_waiting_sequences(self) -> int:
        """Waiting sequences, counting the forks an n > 1 parent will make once admitted."""
        return sum(1 + seq.num_forks for seq in self.waiting)

    def schedule(self, admit: bool = True) -> ScheduledBatch:
        """The next batch; with admit=False no waiting sequence starts (draining)."""
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        preempted = self._schedule_running(batch, budget)
        budget -= sum(batch.num_new_tokens)
        if admit and not preempted:
            self._schedule_waiting(batch, budget)
        batch.block_copies = self.block_manager.pending_copies
        self.block_manager.pending_copies = []
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> bool:
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.allocate_slots(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
                budget -= num_new
                i += 1
                continue
            break  # `seq` itself was preempted: it was the newest, nothing after it
        return preempted

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if len(self.running) + 1 + seq.num_forks > self.max_num_seqs:
                break
            cached = self.block_manager.match_prefix(seq, self.cache_key(seq))
            num_cached = len(cached[0]) * self.block_manager.block_size
            num_new = min(seq.num_tokens - num_cached, budget)
            if not self.block_manager.allocate_slots(seq, num_new, cached):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new

    def recompute_running(self) -> None:
        """Drop the KV of every running sequence; each is recomputed when next scheduled."""
        for seq in reversed(self.running):
            self._preempt(seq)
        self.running = []

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def add_forks(self, parent: Sequence, children: list[Sequence]) -> None:
        """Children of a prefilled n > 1 parent join the running batch right after it."""
        at = self.running.index(parent) + 1
        self.running[at:at] = children

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        if self.on_finish is not None:
            self.on_finish(seq)
