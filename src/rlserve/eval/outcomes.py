"""A finished trajectory to its `SampleRecord`: answer, correctness, error kind."""

from __future__ import annotations

from typing import Any

from rlserve.eval.answers import answers_equal, extract_answer
from rlserve.eval.batch import completion_text, sampled_tokens
from rlserve.eval.problems import Problem
from rlserve.eval.records import SampleRecord
from rlserve.eval.watch import EARLY_STOP, TIMEOUT
from rlserve.rl.trajectory import Trajectory

# Sandbox statuses of a code run that count as the sample's sandbox error (the code
# raised or ran out of memory); "timeout" counts as a timeout.
_CODE_ERRORS = ("error", "memory")


def error_kind(traj: Trajectory, stopped: str | None) -> str | None:
    """None, "timeout" (a budget ran out, a code run or the tools timed out),
    "sandbox_error" (the sandbox failed, or the sample's code raised) or "infra_error"
    (the backend failed: rejected request, server or engine error)."""
    if stopped == TIMEOUT:
        return "timeout"
    if stopped == EARLY_STOP:
        return None
    if traj.infra_error:
        error = traj.error or ""
        if error.startswith("sandbox error"):
            return "sandbox_error"
        if error.startswith("tools took longer"):
            return "timeout"
        return "infra_error"
    if "timeout" in traj.code_statuses:
        return "timeout"
    if any(status in _CODE_ERRORS for status in traj.code_statuses):
        return "sandbox_error"
    return None


def sample_record(
    tokenizer: Any, problem: Problem, sample_index: int, traj: Trajectory, stopped: str | None
) -> SampleRecord:
    """The record of one sample; `stopped` is why the runner stopped it (None: it ended
    on its own). A sample stopped early has no answer and is not scored."""
    text = completion_text(tokenizer, traj)
    early = stopped == EARLY_STOP
    answer = None if early else extract_answer(text)
    return SampleRecord(
        problem_id=problem.id,
        sample_index=sample_index,
        prompt_ids=list(traj.prompt_ids),
        completion_ids=list(traj.completion_ids),
        logprobs=list(traj.logprobs),
        text=text,
        answer=answer,
        correct=not early and answers_equal(answer, problem.answer),
        finish_reason=traj.finish_reason,
        num_tool_calls=len(traj.code_statuses),
        error_kind=error_kind(traj, stopped),
        stopped_early=early,
        num_tokens=sampled_tokens(traj),
    )


def unstarted_record(problem: Problem, sample_index: int, prompt_ids: list[int]) -> SampleRecord:
    """A sample the run budget never reached: nothing sampled, a timeout."""
    return SampleRecord(
        problem_id=problem.id,
        sample_index=sample_index,
        prompt_ids=prompt_ids,
        completion_ids=[],
        logprobs=[],
        text="",
        answer=None,
        correct=False,
        finish_reason=None,
        num_tool_calls=0,
        error_kind="timeout",
        stopped_early=False,
        num_tokens=0,
    )
