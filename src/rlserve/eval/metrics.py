"""Scores of an evaluation from its sample records: accuracy, maj@k, pass@k, tokens, tool
calls, errors by kind, and what early stopping saved.

Samples cancelled by early stopping (`stopped_early`) have no answer and are not scored:
they were cancelled because they could no longer change the majority answer. A problem's
samples are taken in `sample_index` order, so maj@j and pass@j use its first j samples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from math import comb

from rlserve._checks import ParamError, check_positive_int
from rlserve.eval.answers import vote_key
from rlserve.eval.records import ERROR_KINDS, SampleRecord


@dataclass
class EvalSummary:
    """The scores. `maj_at[j]` / `pass_at[j]` for j = 1..k (pass@j is the unbiased
    estimator of Chen et al. 2021 over the problem's n scored samples, with j capped at n);
    `errors` counts records by error kind (every kind present, 0 when none)."""

    k: int
    num_problems: int
    num_samples: int
    num_scored: int
    accuracy: float
    maj_at: dict[int, float]
    pass_at: dict[int, float]
    mean_tokens: float
    num_tool_calls: int
    mean_tool_calls: float
    errors: dict[str, int] = field(default_factory=dict)
    stopped_early: int = 0
    tokens_saved: int = 0

    @property
    def maj_at_k(self) -> float:
        return self.maj_at[self.k]

    @property
    def pass_at_k(self) -> float:
        return self.pass_at[self.k]

    def to_dict(self) -> dict:
        """A JSON-ready dict (the curves' keys as strings)."""
        data = asdict(self)
        data["maj_at"] = {str(j): v for j, v in self.maj_at.items()}
        data["pass_at"] = {str(j): v for j, v in self.pass_at.items()}
        return data


def summarize(records: list[SampleRecord], k: int) -> EvalSummary:
    """The scores of `records` (every sample of every problem) for `k` samples a problem."""
    check_positive_int("k", k)
    if not isinstance(records, list) or not all(isinstance(r, SampleRecord) for r in records):
        raise ParamError("records", "records must be a list of SampleRecord")
    by_problem = group_by_problem(records)
    scored = [r for r in records if r.scored]
    errors = Counter(r.error_kind for r in records if r.error_kind is not None)
    tool_calls = sum(r.num_tool_calls for r in scored)
    return EvalSummary(
        k=k,
        num_problems=len(by_problem),
        num_samples=len(records),
        num_scored=len(scored),
        accuracy=_mean([float(r.correct) for r in scored]),
        maj_at={j: _mean([majority_correct(s, j) for s in by_problem.values()]) for j in _js(k)},
        pass_at={j: _mean([pass_at(s, j) for s in by_problem.values()]) for j in _js(k)},
        mean_tokens=_mean([float(r.num_tokens) for r in scored]),
        num_tool_calls=tool_calls,
        mean_tool_calls=tool_calls / len(scored) if scored else 0.0,
        errors={kind: errors.get(kind, 0) for kind in ERROR_KINDS},
        stopped_early=sum(r.stopped_early for r in records),
        tokens_saved=sum(r.tokens_saved for r in records),
    )


def group_by_problem(records: list[SampleRecord]) -> dict[str, list[SampleRecord]]:
    """Each problem's records in sample order; problems in order of first appearance."""
    groups: dict[str, list[SampleRecord]] = {}
    for record in records:
        groups.setdefault(record.problem_id, []).append(record)
    return {pid: sorted(rs, key=lambda r: r.sample_index) for pid, rs in groups.items()}


def majority_answer(samples: list[SampleRecord], j: int) -> SampleRecord | None:
    """The first-voted sample of the most common answer (by `vote_key`) among the first
    `j` scored samples; ties go to the answer voted first; None when none has an answer."""
    votes: Counter[str] = Counter()
    first: dict[str, SampleRecord] = {}
    for record in [r for r in samples if r.scored][:j]:
        key = vote_key(record.answer)
        if key is not None:
            votes[key] += 1
            first.setdefault(key, record)
    if not votes:
        return None
    top = max(votes.values())
    return next(first[key] for key in first if votes[key] == top)


def majority_correct(samples: list[SampleRecord], j: int) -> float:
    """1.0 when the majority answer of the first `j` scored samples is correct."""
    winner = majority_answer(samples, j)
    return float(winner is not None and winner.correct)


def pass_at(samples: list[SampleRecord], j: int) -> float:
    """Unbiased pass@j over the problem's n scored samples, c of them correct:
    1 - C(n - c, j) / C(n, j), with j capped at n (0.0 when nothing was scored)."""
    scored = [r for r in samples if r.scored]
    n, c = len(scored), sum(r.correct for r in scored)
    if n == 0:
        return 0.0
    j = min(j, n)
    return 1.0 - comb(n - c, j) / comb(n, j)


def _js(k: int) -> range:
    return range(1, k + 1)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
