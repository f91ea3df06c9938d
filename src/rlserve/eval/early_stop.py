"""Early stopping for majority voting, and the estimate of the tokens it saved.

A problem's remaining samples are stopped once its majority answer can no longer change:
the leading answer (never "no answer") has more votes than any other answer, "no answer"
included, could reach if every remaining sample voted for it. The rule is strict, so it
holds however ties are broken and whether or not unanswered samples take part in the vote.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from statistics import fmean


def majority_settled(votes: Iterable[str | None], remaining: int) -> bool:
    """Whether the majority of `votes` (vote keys; None: no answer) stays the same whatever
    the `remaining` samples answer."""
    counts = Counter(votes)
    leaders = sorted(((n, key) for key, n in counts.items() if key is not None), reverse=True)
    if not leaders:
        return False
    top, leader = leaders[0]
    runner_up = max((n for key, n in counts.items() if key != leader), default=0)
    return top > runner_up + remaining


def tokens_saved(sampled: int, completed_lengths: list[int]) -> int:
    """The estimated tokens a sample stopped after `sampled` tokens would still have
    generated: the mean remainder (length - sampled) of the run's completed samples that
    grew longer than `sampled`; 0 when none did (a conservative estimate: the samples of a
    problem decode in step, so a stopped one is already as long as the ones that ended)."""
    longer = [n - sampled for n in completed_lengths if n > sampled]
    return round(fmean(longer)) if longer else 0
