"""GRPO on the bundled model, end to end: rollouts through rlserve, a clipped policy-gradient
update in plain PyTorch, and the new weights pushed into the engine in place every step.

    python examples/grpo.py --time-budget-s 540  # in-process engine (what `make grpo` runs)
    python examples/grpo.py --async              # rollouts of step t+1 while step t trains
    python examples/grpo.py --server http://127.0.0.1:8000   # a running `rlserve serve`

The task (examples/grpo_task.py): 2-digit subtractions with a one-digit result, no tools,
which the bundled model gets about 20% right at the start; reward 1 for the exact answer.
Each step logs the mean reward, greedy accuracy on a fixed held-out set, KL to the start policy, the
train/rollout logprob mismatch, rollout tokens/s and the time split; the end writes
history.jsonl and reward_curve.png under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from grpo_plot import save_reward_curve
from grpo_rollout import RolloutBatch, accuracy, collect, make_backend
from grpo_task import Problem, split_problems
from grpo_trainer import Batch, TrainConfig, Trainer, group_advantages, to_batch

from rlserve.backends import InferenceBackend
from rlserve.config import BUNDLED_MODEL


@dataclass
class GRPOConfig:
    """One run's settings, checked once (every CLI flag is one of these fields)."""

    steps: int = 150
    prompts_per_step: int = 32
    group_size: int = 8
    max_tokens: int = 16
    held_out: int = 150
    eval_every: int = 5
    seed: int = 0
    async_rollouts: bool = False
    max_staleness: int = 1
    time_budget_s: float | None = None  # stop starting new steps after this many seconds
    model: str | None = None  # a checkpoint folder; None: the bundled model
    server: str | None = None  # an rlserve server's URL; None: an in-process engine
    out: str | None = "grpo_out"  # history.jsonl and reward_curve.png; None: no files
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "max_tokens", "held_out", "eval_every"):
            _check_int(name, getattr(self, name), 1)
        _check_int("group_size", self.group_size, 2)  # an advantage needs a group to compare
        _check_int("max_staleness", self.max_staleness, 0)
        _check_int("seed", self.seed, 0)
        budget = self.time_budget_s
        if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
            raise ValueError(f"time_budget_s must be a positive number or None, got {budget!r}")
        if self.server is not None and not self.server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s) URL, got {self.server!r}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")


@dataclass
class RunResult:
    history: list[dict]  # one row per step
    start_accuracy: float
    final_accuracy: float
    seconds: float


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def step_problems(pool: list[Problem], config: GRPOConfig) -> list[list[Problem]]:
    """Every step's prompts, drawn up front (the async rollout thread shares no RNG)."""
    rng = random.Random(config.seed)
    return [rng.sample(pool, config.prompts_per_step) for _ in range(config.steps)]


def version_lag(batch: Batch, trainer_version: int) -> dict[str, float | None]:
    """How many updates behind the trainer each sampled token's weights were."""
    versions = batch.versions[batch.mask > 0]
    if bool((versions < 0).any()):  # a server that does not report versions
        return {"version_lag_max": None, "version_lag_mean": None}
    lag = (trainer_version - versions).float()
    return {"version_lag_max": lag.max().item(), "version_lag_mean": lag.mean().item()}


def train_on(
    trainer: Trainer, backend: InferenceBackend, rollouts: RolloutBatch, config: GRPOConfig
) -> dict:
    """Advantages, the update, the weight push: this step's log fields."""
    rewards = [r.reward for r in rollouts.rollouts]
    pad = backend.tokenizer.pad_token_id or 0
    batch = to_batch(rollouts.rollouts, group_advantages(rewards, config.group_size), pad)
    start = time.perf_counter()
    row = {**version_lag(batch, trainer.version), **trainer.measure(batch)}
    row.update(trainer.update(batch))
    row["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pushed = backend.update_weights(trainer.weights(), version=trainer.version)
    row["update_s"] = time.perf_counter() - start
    if pushed != trainer.version:
        raise RuntimeError(f"the engine is at version {pushed}, the trainer at {trainer.version}")
    row["policy_version"] = pushed
    return row


def run(config: GRPOConfig) -> RunResult:
    """Train for `config.steps` steps (or until the time budget); the log and accuracies."""
    began = time.perf_counter()
    torch.manual_seed(config.seed)
    backend = make_backend(config.model, config.server, config.max_staleness)
    trainer = Trainer(
        config.model or str(BUNDLED_MODEL), config.train, backend.policy_version, config.seed
    )
    pool, held_out = split_problems(config.held_out)
    plan = step_problems(pool, config)
    pool_thread = ThreadPoolExecutor(1, thread_name_prefix="grpo-rollouts")

    def rollouts_for(step: int) -> RolloutBatch:
        seed = config.seed * 10**6 + step * 10**4
        return collect(backend, plan[step], config.group_size, config.max_tokens, seed)

    history: list[dict] = []
    start_accuracy = accuracy(backend, held_out, config.max_tokens)
    print(f"held-out accuracy at the start: {start_accuracy:.2f} ({len(held_out)} problems)")
    pending: Future | None = pool_thread.submit(rollouts_for, 0) if config.async_rollouts else None
    try:
        for step in range(config.steps):
            if config.time_budget_s and time.perf_counter() - began > config.time_budget_s:
                print(f"time budget of {config.time_budget_s:g} s reached after {step} steps")
                break
            waited = time.perf_counter()
            rollouts = pending.result() if pending is not None else rollouts_for(step)
            waited = time.perf_counter() - waited
            row = _rollout_fields(step, rollouts, waited)
            if step % config.eval_every == 0 and step > 0:  # the rollout thread is idle here
                row["heldout_accuracy"] = accuracy(backend, held_out, config.max_tokens)
            if config.async_rollouts and step + 1 < config.steps:
                pending = pool_thread.submit(rollouts_for, step + 1)
            else:
                pending = None
            if not rollouts.rollouts:
                raise RuntimeError(f"step {step}: every rollout failed ({rollouts.dropped})")
            row.update(train_on(trainer, backend, rollouts, config))
            history.append(row)
            print(format_row(row), flush=True)
    finally:
        if pending is not None:
            pending.result()  # the thread must finish before the engine goes
        pool_thread.shutdown()
    final_accuracy = accuracy(backend, held_out, config.max_tokens)
    backend.close()
    result = RunResult(history, start_accuracy, final_accuracy, time.perf_counter() - began)
    if history:
        history[0]["heldout_accuracy"] = start_accuracy
        history[-1]["heldout_accuracy_after"] = final_accuracy
    print(
        f"held-out accuracy {start_accuracy:.2f} -> {final_accuracy:.2f} after "
        f"{len(history)} steps in {result.seconds:.0f} s"
    )
    return result


def _rollout_fields(step: int, rollouts: RolloutBatch, waited: float) -> dict:
    rewards = [r.reward for r in rollouts.rollouts]
    return {
        "step": step,
        "reward_mean": sum(rewards) / max(1, len(rewards)),
        "samples": len(rewards),
        "dropped": rollouts.dropped,
        "rollout_tokens_per_s": rollouts.num_tokens / max(rollouts.seconds, 1e-9),
        "rollout_s": rollouts.seconds,
        "rollout_wait_s": waited,  # sync: the whole rollout; async: what was not hidden
    }


def format_row(row: dict) -> str:
    """One log line per step."""
    acc = row.get("heldout_accuracy")
    lag = row.get("version_lag_max")
    return (
        f"step {row['step']:3d}  reward {row['reward_mean']:.3f}  "
        f"held-out {'  -  ' if acc is None else f'{acc:.2f} '} "
        f"kl {row['kl_to_start']:.4f}  mismatch max {row['mismatch_max']:.1e} "
        f"mean {row['mismatch_mean']:.1e}  lag {'?' if lag is None else f'{lag:.0f}'}  "
        f"{row['rollout_tokens_per_s']:.0f} tok/s  rollout {row['rollout_s']:.2f}s "
        f"(waited {row['rollout_wait_s']:.2f}s) train {row['train_s']:.2f}s "
        f"update {row['update_s']:.3f}s"
    )


def write_outputs(result: RunResult, config: GRPOConfig) -> None:
    if config.out is None:
        return
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "history.jsonl", "w") as f:
        for row in result.history:
            f.write(json.dumps(row) + "\n")
    mode = "async" if config.async_rollouts else "sync"
    title = (
        f"GRPO, {mode}, seed {config.seed}: held-out "
        f"{result.start_accuracy:.2f} -> {result.final_accuracy:.2f}"
    )
    if save_reward_curve(result.history, out / "reward_curve.png", title):
        print(f"wrote {out / 'reward_curve.png'} and {out / 'history.jsonl'}")


def parse_args(argv: list[str] | None) -> GRPOConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults, train_defaults = GRPOConfig(), TrainConfig()
    for name, value in asdict(defaults).items():
        if name in ("train", "async_rollouts"):
            continue
        kind = float if name == "time_budget_s" else type(value) if value is not None else str
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    parser.add_argument("--async", dest="async_rollouts", action="store_true")
    for name, value in asdict(train_defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    train = {name: args.pop(name) for name in asdict(train_defaults)}
    try:
        return GRPOConfig(**args, train=TrainConfig(**train))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> RunResult:
    """Parse the flags, run, write history.jsonl and reward_curve.png under --out."""
    config = parse_args(argv)
    result = run(config)
    write_outputs(result, config)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
