"""How many sequences wait for a batch slot, and refusing what may not join them."""

from __future__ import annotations

import threading

from rlserve.server.loop_errors import EngineUnavailable, Overloaded, TooManySequences


class Admission:
    """The waiting sequences, counted in two parts; `max_queue` bounds their sum.

    `lock` guards the counts, and (held by the loop) the inbox against shutdown's drain.
    Only the engine thread writes `waiting`; it takes the lock too, so a submit never
    sees a group counted twice or not at all.
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.lock = threading.Lock()
        self.queued = 0  # submitted, not yet handed to the engine
        self.waiting = 0  # handed over, not yet running (forks to come included)

    @property
    def depth(self) -> int:
        return self.queued + self.waiting

    def refuse_unless_admissible(self, num_sequences: int, *, closing: bool, running: bool) -> None:
        """Under `lock`: EngineUnavailable, TooManySequences or Overloaded, if due."""
        if closing:
            raise EngineUnavailable("the server is shutting down; retry on another replica")
        if not running:
            raise EngineUnavailable("the engine is not running (starting or stopping)")
        if num_sequences > self.max_queue:
            raise TooManySequences(
                f"this request has {num_sequences} sequences (prompts x n) but at most "
                f"{self.max_queue} may wait (--max-queue); send fewer prompts or a smaller n"
            )
        if self.depth + num_sequences > self.max_queue:
            raise Overloaded(
                f"server overloaded: {self.depth} sequences are already waiting "
                f"(limit --max-queue {self.max_queue}); retry later"
            )

    def hand_over(self, num_sequences: int) -> None:
        """Engine thread: from queued to waiting, never briefly uncounted."""
        with self.lock:
            self.queued -= num_sequences
            self.waiting += num_sequences

    def refused(self, num_sequences: int) -> None:
        """Engine thread: the engine did not take sequences handed over."""
        with self.lock:
            self.waiting -= num_sequences

    def engine_waiting(self, num_sequences: int) -> None:
        """Engine thread: what the engine reports waiting (n > 1: forks included)."""
        with self.lock:
            self.waiting = num_sequences
