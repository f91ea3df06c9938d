"""examples/grpo.py: a real GRPO loop on the bundled model (engine, trainer, weight pushes),
run for two tiny steps in sync and async mode; its parts checked one by one. Nothing is
mocked: rollouts run through a real Engine, the trainer is transformers' Qwen3."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import grpo  # noqa: E402
from grpo_rollout import Rollout, SharedEngine, collect, prompt_ids  # noqa: E402
from grpo_task import Problem, final_number, reward, split_problems  # noqa: E402
from grpo_trainer import TrainConfig, Trainer, group_advantages, to_batch  # noqa: E402

from rlserve import SamplingParams  # noqa: E402
from rlserve.backends import EngineBackend  # noqa: E402
from rlserve.config import BUNDLED_MODEL  # noqa: E402

TINY = ["--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--held-out", "8"]
STEP_FIELDS = (
    "reward_mean",
    "kl_to_start",
    "mismatch_max",
    "mismatch_mean",
    "rollout_tokens_per_s",
    "rollout_s",
    "rollout_wait_s",
    "train_s",
    "update_s",
    "loss",
    "clip_fraction",
    "version_lag_max",
    "version_lag_mean",
)


def run_tiny(tmp_path: Path, *extra: str) -> grpo.RunResult:
    return grpo.main([*TINY, "--eval-every", "1", "--out", str(tmp_path), *extra])


def check_rows(result: grpo.RunResult) -> None:
    assert [row["step"] for row in result.history] == [0, 1]
    for row in result.history:
        for name in STEP_FIELDS:
            assert math.isfinite(row[name]), (name, row[name])
        assert row["policy_version"] == row["step"] + 1  # update_weights bumped it each step
        assert row["mismatch_max"] < 1e-3  # fp32 engine vs fp32 transformers
        assert row["samples"] == 4 and row["dropped"] == 0
    assert 0.0 <= result.start_accuracy <= 1.0 and 0.0 <= result.final_accuracy <= 1.0
    assert result.history[1]["heldout_accuracy"] is not None


def test_two_sync_steps_log_every_field_and_push_weights(tmp_path: Path) -> None:
    result = run_tiny(tmp_path)
    check_rows(result)
    assert all(row["version_lag_max"] == 0 for row in result.history)  # on-policy
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [row["policy_version"] for row in rows] == [1, 2]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_async_steps_lag_at_most_one_version(tmp_path: Path) -> None:
    result = run_tiny(tmp_path, "--async")
    check_rows(result)
    assert result.history[0]["version_lag_max"] == 0  # step 0's rollouts ran before any update
    assert all(row["version_lag_max"] <= 1 for row in result.history)


def test_an_update_between_steps_shows_in_the_token_versions(make_engine) -> None:
    """Rollouts sampled across a weight update carry both versions, and each token's
    logprob is still the trainer's under the weights that sampled it (KV recomputed)."""
    engine = make_engine()
    backend = EngineBackend(SharedEngine(engine, max_staleness=1))  # type: ignore[arg-type]
    trainer = Trainer(str(BUNDLED_MODEL), TrainConfig(lr=1e-3), version=0, seed=0)
    problems = [Problem(63, 59), Problem(42, 38)]
    first = collect(backend, problems, group_size=4, max_tokens=12, seed=1)
    rewards = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # any mixed rewards give a gradient
    trainer.update(to_batch(first.rollouts, group_advantages(rewards, 4), pad_id=0))

    prompts = [prompt_ids(backend, p) for p in problems]
    params = [SamplingParams(temperature=1.0, max_tokens=12, seed=k) for k in range(2)]
    ids = [backend.engine.add_request(p, s) for p, s in zip(prompts, params, strict=True)]
    outputs: dict[str, list] = {i: [] for i in ids}

    def step() -> None:
        for delta in backend.engine.step():
            outputs[delta.request_id] += delta.outputs

    step()  # prefill and the first token, on version 0
    step()
    assert backend.update_weights(trainer.weights(), version=1) == 1
    while engine.has_unfinished_requests():
        step()
    rollouts = []
    for request_id, prompt in zip(ids, prompts, strict=True):
        tokens = [t for out in outputs[request_id] for t in out.token_ids]
        versions = [v for out in outputs[request_id] for v in out.weight_versions]
        logprobs = [x for out in outputs[request_id] for x in out.logprobs]
        assert versions[:2] == [0, 0] and versions[-1] == 1, versions
        rollouts.append(Rollout(prompt, tokens, logprobs, versions, 0.0))
    measured = trainer.measure(to_batch(rollouts, [0.0, 0.0], pad_id=0))
    assert measured["mismatch_max"] < 1e-3


def test_max_staleness_aborts_a_request_two_versions_behind(make_engine) -> None:
    engine = make_engine()
    shared = SharedEngine(engine, max_staleness=1)
    trainer = Trainer(str(BUNDLED_MODEL), TrainConfig(), version=0, seed=0)
    request_id = shared.add_request([1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True))
    shared.step()
    shared.update_weights(trainer.weights(), version=1)  # one behind: still running
    assert engine.has_unfinished_requests()
    shared.update_weights(trainer.weights(), version=2)  # two behind: aborted
    (delta,) = shared.step()
    assert delta.request_id == request_id and delta.finished
    assert delta.outputs[0].finish_reason == "abort"
    assert "stale" in delta.outputs[0].stop_reason


def test_reward_is_the_exact_answer_as_the_last_number() -> None:
    problem = Problem(63, 59)
    assert reward("63 - 59 = 4", problem) == 1.0
    assert reward("63 - 59 = 14", problem) == 0.0
    assert reward("no number", problem) == 0.0
    assert final_number("12 - 15 = -3") == -3


def test_problems_split_into_disjoint_fixed_sets() -> None:
    train, held_out = split_problems(150)
    assert len(held_out) == 150 and len(train) == 765 - 150
    assert not set(train) & set(held_out)
    assert split_problems(150)[1] == held_out  # the same held-out set every run
    assert all(1 <= p.answer <= 9 and 10 <= p.b < p.a <= 99 for p in train + held_out)


def test_group_advantages_are_normalised_within_each_group() -> None:
    advantages = group_advantages([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], 4)
    sigma = math.sqrt(0.25 * 0.75)
    expected = [0.75 / sigma, -0.25 / sigma, -0.25 / sigma, -0.25 / sigma]
    assert advantages[:4] == pytest.approx(expected, rel=1e-3)
    assert advantages[4:] == [0.0] * 4  # all right: nothing to learn from this group


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--group-size", "1"], "group_size"),
        (["--steps", "0"], "steps"),
        (["--lr", "-1"], "lr"),
        (["--minibatches", "0"], "minibatches"),
        (["--server", "localhost:8000"], "server"),
        (["--time-budget-s", "0"], "time_budget_s"),
    ],
)
def test_bad_flags_are_refused_naming_the_field(flags, field, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        grpo.main(flags)
    assert exc.value.code == 2
    assert field in capsys.readouterr().err


def test_bad_config_values_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="held_out"):
        grpo.GRPOConfig(held_out=0)
    with pytest.raises(ValueError, match="kl_coef"):
        TrainConfig(kl_coef=-0.1)
    with pytest.raises(ValueError, match="num_held_out"):
        split_problems(765)
