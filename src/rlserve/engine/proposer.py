"""What a speculative-decoding proposer is: given sequences, guess their next tokens.

The engine verifies every guess with the target model (engine/speculative.py), so a
proposer only affects speed, never what is generated. Proposers here are deterministic
(n-gram lookup, a greedy draft model): verification accepts a guessed token exactly when
it is the token the target's own seeded sampler picks at that position, which is the
standard rejection rule with a one-hot draft distribution, and keeps outputs identical
to decoding without speculation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ProposalInput:
    """One running sequence the engine wants guesses for."""

    key: tuple[str, int]  # (request id, sample index): stable for the sequence's life
    token_ids: list[int]  # prompt + output so far (the last one has no KV yet)
    num_prompt_tokens: int
    max_tokens: int  # at most this many guesses (>= 1): k, capped by max_tokens and length


class Proposer(Protocol):
    """Guesses tokens; holds at most per-sequence caches it can rebuild."""

    def propose(self, inputs: list[ProposalInput]) -> list[list[int]]:
        """One list of guessed token ids per input (0..max_tokens of them)."""
        ...

    def release(self, key: tuple[str, int]) -> None:
        """The sequence finished or was aborted: drop anything held for it."""
        ...

    def reset(self) -> None:
        """Drop all state (e.g. after a weight update or a prefix-cache reset)."""
        ...
