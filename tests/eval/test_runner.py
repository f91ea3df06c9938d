"""`run_eval`: k samples per problem on a backend, early stopping, budgets, TIR errors.

The native engine and a real rlserve server run the bundled model; the TIR cases use a
scripted policy (tests/support/rollouts.py) in place of a model that writes code, because
the bundled model writes calculator JSON, not Python; the code runs in the real sandbox.
"""

from __future__ import annotations

from collections import Counter

import pytest

from rlserve.backends import Sample
from rlserve.backends.base import Cancels, cancelled_sample
from rlserve.eval import load_problems, summarize
from rlserve.eval.answers import vote_key
from rlserve.eval.early_stop import majority_settled, tokens_saved
from rlserve.eval.problems import Problem
from rlserve.eval.runner import EvalConfig, run_eval
from rlserve.sandbox import Sandbox, SandboxResult
from tests.support.remote_backends import dialect_backend, remote_server
from tests.support.rollouts import ScriptedPolicy


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return load_problems(limit=20)


@pytest.fixture
def engine(make_engine):
    return make_engine(num_blocks=512, block_size=8)


def majority(records, problem_id):
    votes = Counter(vote_key(r.answer) for r in records if r.problem_id == problem_id)
    votes.pop(None, None)
    return votes.most_common(1)[0][0] if votes else None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TickingPolicy(ScriptedPolicy):
    """Answers `reply`; each request takes `tick` fake seconds; honours cancellation as a
    backend must (polls before each request, reports cancelled ones)."""

    def __init__(self, tokenizer, reply, clock: FakeClock, tick: float) -> None:
        super().__init__(tokenizer, reply)
        self.clock, self.tick = clock, tick

    def generate(self, requests, on_done) -> None:
        cancels = Cancels(on_done, len(requests))
        for k, (prompt, _params) in enumerate(requests):
            cancels.poll()
            if cancels.asked(k):
                cancels.report(k, cancelled_sample())
                continue
            ids = self._encode(self.reply(self.tokenizer.decode(prompt))) + [self.end_id]
            self.clock.now += self.tick
            cancels.report(k, Sample(ids, [-0.5] * len(ids), [0] * len(ids), "stop"))


# ---- the early-stopping rule --------------------------------------------------------------


def test_majority_settled_only_when_no_outcome_can_change_it():
    assert majority_settled(["5", "5", "5"], 2)  # 3 > 0 + 2
    assert not majority_settled(["5", "5"], 2)  # the other two could tie it
    assert not majority_settled(["5", "5", "6"], 1)  # 2 > 1 + 1 fails: a tie is possible
    assert not majority_settled([None, None, None], 0)  # no answer never leads
    assert not majority_settled([None, None, "5"], 0)  # "no answer" outvotes "5"
    assert majority_settled(["5"], 0)
    assert tokens_saved(10, [8, 12, 20]) == 6  # mean of 2 and 10
    assert tokens_saved(30, [8, 12]) == 0


# ---- the native engine ----------------------------------------------------------------------


def test_greedy_native_is_deterministic_and_scored(engine, problems):
    config = EvalConfig(k=1, max_tokens=48)
    first = run_eval(engine, problems[:6], config, progress=False)
    again = run_eval(engine, problems[:6], config, progress=False)
    assert [r.completion_ids for r in first] == [r.completion_ids for r in again]
    assert [r.problem_id for r in first] == [p.id for p in problems[:6]]
    for record, problem in zip(first, problems[:6], strict=True):
        assert record.finish_reason == "stop" and record.error_kind is None
        assert len(record.logprobs) == len(record.completion_ids) == record.num_tokens
        assert record.text and record.prompt_ids
        assert record.correct == (vote_key(record.answer) == vote_key(problem.answer))
    accuracy = summarize(first, 1).accuracy
    assert 0 < accuracy < 1  # the bundled model solves some, not all


def test_early_stopping_aborts_samples_and_keeps_the_majority(engine, problems):
    # Eight problems, eight samples each: on these seeds the engine stops one sample of
    # arith-004 (its samples finish a step apart; most problems' finish in the same step).
    chosen = problems[2:10]
    base = dict(k=8, temperature=1.0, max_tokens=24, seed=1)
    stopped = run_eval(engine, chosen, EvalConfig(**base), progress=False)
    full = run_eval(engine, chosen, EvalConfig(**base, early_stop=False), progress=False)
    early = [r for r in stopped if r.stopped_early]
    assert early, "some samples were stopped early"
    assert not any(r.stopped_early for r in full)
    for r in early:
        assert r.finish_reason == "abort" and r.answer is None and not r.correct
    # Contract 5: a seeded sample is the same whatever else runs, so the ones that were
    # not stopped match the full run token for token, and what was stopped was cut short.
    for a, b in zip(stopped, full, strict=True):
        if a.stopped_early:
            assert (
                a.num_tokens <= b.num_tokens
                and a.completion_ids == b.completion_ids[: a.num_tokens]
            )
        else:
            assert a.completion_ids == b.completion_ids
    assert sum(r.num_tokens for r in stopped) < sum(r.num_tokens for r in full)
    assert sum(r.tokens_saved for r in stopped) > 0
    for p in chosen:
        assert majority(stopped, p.id) == majority(full, p.id)
    assert summarize(stopped, 8).maj_at_k == summarize(full, 8).maj_at_k
    # (the autouse fixture checks that every KV block was freed)


def test_early_stopping_cancels_requests_not_yet_run(bundled):
    """A backend that runs requests one by one: once three samples agree, the last two of
    five cannot change the majority and are cancelled before they run."""
    clock = FakeClock()
    policy = TickingPolicy(bundled.tokenizer, lambda _: "It is 5.", clock, tick=0.0)
    one = [Problem("p", "What is 2 + 3?", "5")]
    records = run_eval(policy, one, EvalConfig(k=5), progress=False, clock=clock)
    assert [r.stopped_early for r in records] == [False, False, False, True, True]
    assert records[3].completion_ids == [] and records[3].finish_reason == "abort"
    completed = records[0].num_tokens
    assert [r.tokens_saved for r in records] == [0, 0, 0, completed, completed]
    assert summarize(records, 5).accuracy == 1.0  # the stopped samples are not scored


def test_a_problem_over_its_budget_times_out(engine, problems):
    config = EvalConfig(k=2, max_tokens=48, problem_budget_s=1e-9)
    records = run_eval(engine, problems[:3], config, progress=False)
    assert [r.error_kind for r in records] == ["timeout"] * 6
    assert all(r.finish_reason == "abort" and not r.correct for r in records)


def test_problem_budget_stops_the_samples_still_running(bundled):
    clock = FakeClock()
    policy = TickingPolicy(bundled.tokenizer, lambda _: "It is 5.", clock, tick=3.0)
    one = [Problem("p", "What is 2 + 3?", "5")]
    config = EvalConfig(k=3, problem_budget_s=5.0, early_stop=False)
    records = run_eval(policy, one, config, progress=False, clock=clock)
    # t=0: sample 0 runs (t=3); t=3: sample 1 runs (t=6); t=6 is past the budget.
    assert [r.error_kind for r in records] == [None, None, "timeout"]
    assert [r.correct for r in records] == [True, True, False]


def test_run_budget_marks_problems_never_started(bundled):
    clock = FakeClock()
    policy = TickingPolicy(bundled.tokenizer, lambda _: "It is 5.", clock, tick=10.0)
    three = [Problem(str(i), "What is 2 + 3?", "5") for i in range(3)]
    config = EvalConfig(k=1, run_budget_s=5.0, batch_problems=1)
    records = run_eval(policy, three, config, progress=False, clock=clock)
    assert [r.error_kind for r in records] == [None, "timeout", "timeout"]
    assert records[1].completion_ids == [] and records[1].finish_reason is None
    assert records[1].prompt_ids == records[0].prompt_ids  # the prompt it would have had


# ---- TIR: code errors, sandbox failures and timeouts --------------------------------------

TIR_REPLIES = {
    "What is 2 + 3?": "<tool_call>\nprint(2 + 3)\n</tool_call>",
    "What is 1 / 0?": "<tool_call>\nprint(1 / 0)\n</tool_call>",
    "What is forever?": "<tool_call>\nwhile True:\n    pass\n</tool_call>",
}


def tir_reply(prompt: str) -> str:
    turn = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if "```output\n" in turn:  # after the code ran: answer from its output
        shown = turn.rsplit("```output\n", 1)[1].split("```")[0].strip()
        return f"The answer is \\boxed{{{shown.splitlines()[-1] if shown else 0}}}."
    return next(code for question, code in TIR_REPLIES.items() if question in prompt)


def test_tir_records_code_errors_and_sandbox_timeouts(bundled):
    problems = [Problem(str(i), q, "5") for i, q in enumerate(TIR_REPLIES)]
    config = EvalConfig(k=1, tir=True, sandbox_timeout_s=4.0)
    with Sandbox() as box:
        records = run_eval(
            ScriptedPolicy(bundled.tokenizer, tir_reply), problems, config, False, sandbox=box
        )
    ok, raised, looped = records
    assert (ok.error_kind, ok.correct, ok.answer, ok.num_tool_calls) == (None, True, "5", 1)
    assert "```output\n5\n```" in ok.text and ok.finish_reason == "stop"
    assert raised.error_kind == "sandbox_error" and "ZeroDivisionError" in raised.text
    assert looped.error_kind == "timeout" and "TimeoutError" in looped.text
    assert summarize(records, 1).accuracy == pytest.approx(1 / 3)


def test_tir_sandbox_failure_is_a_sandbox_error(bundled):
    class BrokenSandbox:
        def run(self, code: str, timeout: float | None = None) -> SandboxResult:
            return SandboxResult("sandbox_error", stderr="no interpreter")

    problems = [Problem("0", "What is 2 + 3?", "5")]
    config = EvalConfig(tir=True)
    policy = ScriptedPolicy(bundled.tokenizer, tir_reply)
    (record,) = run_eval(policy, problems, config, False, sandbox=BrokenSandbox())
    assert record.error_kind == "sandbox_error" and record.finish_reason == "infra_error"
    assert not record.correct


# ---- a remote server --------------------------------------------------------------------------


def test_remote_backend_over_a_real_server_matches_native(engine, problems, tmp_path):
    config = EvalConfig(k=1, max_tokens=32)
    native = run_eval(engine, problems[:5], config, progress=False)
    with remote_server(tmp_path) as server:
        backend = dialect_backend(server, "rlserve")
        try:
            remote = run_eval(backend, problems[:5], config, progress=False)
        finally:
            backend.close()
    assert [r.completion_ids for r in remote] == [r.completion_ids for r in native]
    assert [r.correct for r in remote] == [r.correct for r in native]


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"k": 0}, "k"),
        ({"temperature": -1.0}, "temperature"),
        ({"prompt": "nope/math"}, "generic/math"),
        ({"problem_budget_s": 0}, "problem_budget_s"),
        ({"tir": "yes"}, "tir"),
        ({"code_begin": ""}, "begin"),
        ({"batch_problems": 0}, "batch_problems"),
    ],
)
def test_bad_config_is_refused_naming_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        EvalConfig(**fields)


def test_bad_problems_and_config_are_refused(engine, problems):
    with pytest.raises(ValueError, match="problems"):
        run_eval(engine, [], progress=False)
    with pytest.raises(ValueError, match=r"problems\[1\]"):
        run_eval(engine, [problems[0], "What is 1 + 1?"], progress=False)
    with pytest.raises(ValueError, match="config"):
        run_eval(engine, problems[:1], {"k": 2}, progress=False)


# ---- the rollout hooks the runner relies on (rlserve.rl) ----------------------------------


class StopOthers:
    """A RolloutWatch that stops `targets` once trajectory 0 ends."""

    def __init__(self, targets) -> None:
        self.targets = targets
        self.told: list[int] = []

    def finished(self, index, traj):
        self.told.append(index)
        return self.targets if index == 0 else []

    def poll(self):
        return []


def test_a_watch_stops_a_tir_trajectory_between_rounds(bundled):
    from rlserve.rl import TIRConfig, rollout_batch
    from rlserve.rl.loop import STOPPED

    def reply(prompt: str) -> str:
        return "Done: 5." if "first" in prompt else TIR_REPLIES["What is 2 + 3?"]

    conversations = [[{"role": "user", "content": f"{w} question"}] for w in ("first", "second")]
    watch = StopOthers([1])
    with Sandbox() as box:
        trajs = rollout_batch(
            ScriptedPolicy(bundled.tokenizer, reply),
            conversations,
            max_assistant_turns=3,
            tir=TIRConfig(),
            sandbox=box,
            watch=watch,
        )
    assert trajs[0].finish_reason == "stop"
    assert (trajs[1].finish_reason, trajs[1].error) == ("abort", STOPPED)
    assert trajs[1].num_turns == 1 and trajs[1].completion_ids  # its first round is kept
    assert sorted(watch.told) == [0, 1]  # each told once


def test_rollout_hooks_refuse_bad_input(bundled):
    from rlserve.rl import rollout_batch

    policy = ScriptedPolicy(bundled.tokenizer, lambda _: "5")
    conversation = [{"role": "user", "content": "What is 2 + 3?"}]
    with pytest.raises(ValueError, match="RolloutWatch"):
        rollout_batch(policy, [conversation], watch=StopOthers([3]))
    with pytest.raises(ValueError, match="prompt_ids"):
        rollout_batch(policy, [conversation], prompt_ids=[[1], [2]])
    with pytest.raises(ValueError, match=r"prompt_ids\[0\]"):
        rollout_batch(policy, [conversation], prompt_ids=[["a"]])
    (traj,) = rollout_batch(policy, [conversation], prompt_ids=[[1, 5, 6]])
    assert traj.prompt_ids == [1, 5, 6]  # used as given, not rendered
