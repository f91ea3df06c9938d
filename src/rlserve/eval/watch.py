"""`EvalWatch`: the `RolloutWatch` of one batch of problems (early stopping, deadlines)."""

from __future__ import annotations

from collections.abc import Callable

from rlserve.eval.early_stop import majority_settled
from rlserve.rl.trajectory import Trajectory

EARLY_STOP = "early_stop"  # stopped: the problem's majority answer could no longer change
TIMEOUT = "timeout"  # stopped: the problem's or the run's wall-clock budget ran out


class EvalWatch:
    """Trajectory i is sample i % k of problem i // k. Once a problem's majority answer is
    settled (`early_stop`) its open samples are stopped; at `deadline` (clock seconds)
    every open sample is. `reasons[i]` says why sample i was stopped (only for samples that
    did not finish on their own first); `on_problem_done()` is called as each problem's
    last sample ends."""

    def __init__(
        self,
        num_problems: int,
        k: int,
        vote_of: Callable[[Trajectory], str | None],
        early_stop: bool,
        deadline: float | None,
        clock: Callable[[], float],
        on_problem_done: Callable[[], None] | None = None,
    ) -> None:
        self.k = k
        self.vote_of = vote_of
        self.early_stop = early_stop
        self.deadline = deadline
        self.clock = clock
        self.on_problem_done = on_problem_done
        self.reasons: dict[int, str] = {}
        self.votes: list[list[str | None]] = [[] for _ in range(num_problems)]
        self.open: list[set[int]] = [set(range(p * k, (p + 1) * k)) for p in range(num_problems)]
        self._ended = [0] * num_problems

    def finished(self, index: int, traj: Trajectory) -> list[int]:
        problem = index // self.k
        self.open[problem].discard(index)
        if not (index in self.reasons and traj.finish_reason == "abort"):
            self.reasons.pop(index, None)  # it ended on its own before the stop took hold
            self.votes[problem].append(self.vote_of(traj))
        self._ended[problem] += 1
        if self._ended[problem] == self.k and self.on_problem_done is not None:
            self.on_problem_done()
        remaining = self.open[problem]
        if self.early_stop and remaining and majority_settled(self.votes[problem], len(remaining)):
            return self._stop(remaining, EARLY_STOP)
        return []

    def poll(self) -> list[int]:
        if self.deadline is None or self.clock() < self.deadline:
            return []
        return [i for remaining in self.open for i in self._stop(remaining, TIMEOUT)]

    def _stop(self, remaining: set[int], reason: str) -> list[int]:
        stopped = sorted(remaining)
        for index in stopped:
            self.reasons[index] = reason
        remaining.clear()
        return stopped
