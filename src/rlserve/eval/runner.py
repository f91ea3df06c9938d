"""`run_eval`: k samples per problem on any backend, with budgets and early stopping.

Problems run `batch_problems` at a time, every sample of a batch in one continuous batch
(one `rollout_batch` call: plain completions, or TIR with code in the sandbox). A
problem's budget starts with its batch; the run's with the call. Samples still running
when a budget runs out are stopped (error_kind "timeout"); problems the run budget never
reached get k "timeout" records with nothing sampled. With `early_stop`, a problem's
remaining samples are stopped once its majority answer can no longer change
(`rlserve.eval.early_stop`): their KV is freed at once, they are recorded with
`stopped_early` and the tokens they would still have generated, estimated by
`early_stop.tokens_saved` from the run's completed samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from rlserve._checks import ParamError, check_int, check_number, check_positive_int
from rlserve.backends import as_backend
from rlserve.eval.answers import extract_answer, vote_key
from rlserve.eval.batch import (
    BatchSettings,
    EvalPrompt,
    completion_text,
    prompt_ids_of,
    run_batch,
)
from rlserve.eval.early_stop import tokens_saved
from rlserve.eval.outcomes import sample_record, unstarted_record
from rlserve.eval.problems import Problem
from rlserve.eval.records import SampleRecord
from rlserve.eval.watch import EvalWatch
from rlserve.prompts import PromptTemplate, get_prompt
from rlserve.rl import TIRConfig
from rlserve.rl.trajectory import Trajectory
from rlserve.sampling_params import SamplingParams
from rlserve.sandbox import Sandbox

_TIR_DEFAULTS = TIRConfig()


@dataclass(frozen=True)
class EvalConfig:
    """Sampling (`temperature`, `top_p`, `top_k`, `repetition_penalty`, `max_tokens` per
    generation round, `seed` of the first sample: sample j of the run gets seed + j),
    `k` samples per problem, the `prompt` template (None: "tir/math" with `tir`, else
    "generic/math"), TIR (`code_begin` / `code_end` markers, at most `max_code_runs` code
    runs per sample, each limited to `sandbox_timeout_s`), wall-clock budgets in seconds
    (`problem_budget_s` per problem, `run_budget_s` for the whole call; None: none),
    `early_stop`, and `batch_problems` problems generated together."""

    k: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    prompt: str | None = None
    tir: bool = False
    code_begin: str = _TIR_DEFAULTS.begin
    code_end: str = _TIR_DEFAULTS.end
    max_code_runs: int = 4
    sandbox_timeout_s: float = _TIR_DEFAULTS.timeout_s
    problem_budget_s: float | None = None
    run_budget_s: float | None = None
    early_stop: bool = True
    batch_problems: int = 32

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_int("seed", self.seed, minimum=0)
        check_positive_int("max_code_runs", self.max_code_runs)
        check_positive_int("batch_problems", self.batch_problems)
        for name in ("tir", "early_stop"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, f"{name} must be True or False")
        for name in ("problem_budget_s", "run_budget_s"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), positive=True)
        check_number("sandbox_timeout_s", self.sandbox_timeout_s, positive=True)
        if self.prompt is not None:
            get_prompt(self.prompt)  # ValueError naming the known prompts
        self.sampling_params()  # ValueError naming a bad sampling field
        self.tir_config()  # ValueError naming a bad code marker

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def tir_config(self) -> TIRConfig:
        return TIRConfig(self.code_begin, self.code_end, self.sandbox_timeout_s)

    def template(self) -> PromptTemplate:
        name = self.prompt or ("tir/math" if self.tir else "generic/math")
        template = get_prompt(name).with_code_tags(self.code_begin, self.code_end)
        return replace(template, max_code_runs=self.max_code_runs)


def run_eval(
    backend: Any,
    problems: list[Problem],
    config: EvalConfig | None = None,
    progress: bool = True,
    *,
    sandbox: Sandbox | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[SampleRecord]:
    """`config.k` records per problem, in problem order. `backend`: an `Engine`, a sync
    `rlserve.client.Client` or any `rlserve.backends.InferenceBackend`. `sandbox` runs TIR
    code (None: a fresh `Sandbox()` for this call); `clock` measures the budgets."""
    config = EvalConfig() if config is None else config
    if not isinstance(config, EvalConfig):
        raise ParamError("config", f"config must be an EvalConfig, got {type(config).__name__}")
    problems = _check_problems(problems)
    policy = as_backend(backend)
    prompts = [_prompt(policy.tokenizer, config.template(), p) for p in problems]
    run_deadline = None if config.run_budget_s is None else clock() + config.run_budget_s
    trajectories: list[tuple[Trajectory, str | None] | None] = []
    with _sandbox(config, sandbox) as box, _progress_bar(len(problems), progress) as bar:
        for start in range(0, len(problems), config.batch_problems):
            chunk = prompts[start : start + config.batch_problems]
            if run_deadline is not None and clock() >= run_deadline:
                trajectories += [None] * (len(chunk) * config.k)
                bar.update(len(chunk))
                continue
            deadline = _deadline(clock(), config.problem_budget_s, run_deadline)
            watch = EvalWatch(
                len(chunk),
                config.k,
                lambda t: vote_key(extract_answer(completion_text(policy.tokenizer, t))),
                config.early_stop,
                deadline,
                clock,
                lambda: bar.update(1),
            )
            trajs = run_batch(policy, chunk, config.k, _settings(config, start), watch, box)
            trajectories += [(t, watch.reasons.get(i)) for i, t in enumerate(trajs)]
    return _records(policy.tokenizer, problems, prompts, trajectories, config.k)


def _records(
    tokenizer: Any,
    problems: list[Problem],
    prompts: list[EvalPrompt],
    trajectories: list[tuple[Trajectory, str | None] | None],
    k: int,
) -> list[SampleRecord]:
    records = []
    for i, outcome in enumerate(trajectories):
        problem = problems[i // k]
        if outcome is None:
            ids = prompt_ids_of(tokenizer, prompts[i // k])
            records.append(unstarted_record(problem, i % k, ids))
        else:
            records.append(sample_record(tokenizer, problem, i % k, *outcome))
    completed = [r.num_tokens for r in records if r.error_kind is None and not r.stopped_early]
    for record in records:
        if record.stopped_early:
            record.tokens_saved = tokens_saved(record.num_tokens, completed)
    return records


def _settings(config: EvalConfig, first_problem: int) -> BatchSettings:
    seeded = replace(config.sampling_params(), seed=config.seed + first_problem * config.k)
    if not config.tir:
        return BatchSettings(seeded)
    return BatchSettings(seeded, config.max_code_runs + 1, config.tir_config())


def _deadline(now: float, problem_budget: float | None, run_deadline: float | None) -> float | None:
    limits = [run_deadline, None if problem_budget is None else now + problem_budget]
    present = [d for d in limits if d is not None]
    return min(present) if present else None


def _prompt(tokenizer: Any, template: PromptTemplate, problem: Problem) -> EvalPrompt:
    values = {"problem": problem.question}
    messages = template.messages(values)
    if getattr(tokenizer, "chat_template", None):
        return EvalPrompt(messages)
    return EvalPrompt(messages, template.fill(values))


def _check_problems(problems: Any) -> list[Problem]:
    if not isinstance(problems, (list, tuple)) or not problems:
        raise ParamError("problems", "problems must be a non-empty list of Problem")
    for i, problem in enumerate(problems):
        if not isinstance(problem, Problem):
            raise ParamError(
                "problems", f"problems[{i}] must be a Problem, got {type(problem).__name__}"
            )
    return list(problems)


@contextmanager
def _sandbox(config: EvalConfig, sandbox: Sandbox | None) -> Iterator[Sandbox | None]:
    if not config.tir or sandbox is not None:
        yield sandbox
        return
    with Sandbox() as box:
        yield box


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    if not enabled:
        return nullcontext(_NoBar())
    return tqdm(total=total, unit="problem", desc="eval", dynamic_ncols=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        """Nothing to show."""
