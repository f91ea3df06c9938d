"""The GRPO example's rollouts: G samples per prompt through an rlserve backend.

In process, the backend is an `EngineBackend` over a `SharedEngine`, so that `--async`
rollouts (driving the engine from a thread) and the trainer's weight updates (from the
main thread) take turns between engine steps. With `--server URL` it is a
`RemoteBackend`: the server's engine thread does that job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from grpo_task import Problem, reward

from rlserve import Engine, SamplingParams
from rlserve.backends import BackendConfig, EngineBackend, InferenceBackend, RemoteBackend, Sample


@dataclass
class Rollout:
    """One sampled completion: token ids in, token ids out, never re-tokenised."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # of each sampled token, at T = 1 (the sampling temperature)
    weight_versions: list[int]  # the policy version that sampled each token
    reward: float


@dataclass
class RolloutBatch:
    """The rollouts of one step, group by group (G consecutive rollouts per prompt)."""

    rollouts: list[Rollout]
    seconds: float
    dropped: int  # samples that failed or were aborted (stale): not trained on

    @property
    def num_tokens(self) -> int:
        return sum(len(r.completion_ids) for r in self.rollouts)


class SharedEngine:
    """An `Engine` that a rollout thread steps while the trainer updates its weights:
    `step`, `add_request`, `abort` and `update_weights` each hold one lock, so an update
    lands between two steps. Requests get `max_staleness`: one still running two versions
    after it started is aborted. Updates recompute the KV of running requests, so every
    token's logprob is exactly its weights version's (what the trainer checks)."""

    def __init__(self, engine: Engine, max_staleness: int | None) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.max_staleness = max_staleness

    def __getattr__(self, name: str) -> Any:  # tokenizer, paused, policy_version, ...
        return getattr(self._engine, name)

    def add_request(self, prompt: Any, params: SamplingParams, **options: Any) -> str:
        with self._lock:
            return self._engine.add_request(
                prompt, params, max_staleness=self.max_staleness, **options
            )

    def step(self) -> list:
        with self._lock:
            return self._engine.step()

    def abort(self, request_id: str, reason: str | None = None) -> bool:
        with self._lock:
            return self._engine.abort(request_id, reason)

    def update_weights(self, weights: Any, version: int | None = None) -> int:
        with self._lock:
            return self._engine.update_weights(weights, version, recompute_kv=True)


def make_backend(
    model: str | None, server: str | None, max_staleness: int | None
) -> InferenceBackend:
    """`model` (None: the bundled one) in process, or the rlserve server at `server`
    serving it (`model` then only names the tokenizer)."""
    if server is not None:
        config = BackendConfig(kind="remote", base_url=server, model=model)
        return RemoteBackend.from_config(config)
    engine = SharedEngine(Engine(model), max_staleness)
    return EngineBackend(engine)  # type: ignore[arg-type]


def prompt_ids(backend: InferenceBackend, problem: Problem) -> list[int]:
    """The chat template's rendering of the problem, ready for the assistant's reply."""
    text = backend.tokenizer.apply_chat_template(
        problem.messages(), tokenize=False, add_generation_prompt=True
    )
    return backend.tokenizer.encode(text, add_special_tokens=False)


def run_requests(
    backend: InferenceBackend, prompts: list[list[int]], params: list[SamplingParams]
) -> list[Sample]:
    """Every request in one continuous batch; the samples in request order."""
    samples: list[Sample | None] = [None] * len(prompts)

    def on_done(index: int, sample: Sample) -> None:
        samples[index] = sample

    backend.generate(list(zip(prompts, params, strict=True)), on_done)
    return [s if s is not None else Sample.failed("no reply") for s in samples]


def collect(
    backend: InferenceBackend,
    problems: list[Problem],
    group_size: int,
    max_tokens: int,
    seed: int,
) -> RolloutBatch:
    """`group_size` samples (T = 1) of each problem. A group with a failed or aborted
    sample is dropped whole: its advantages would be normalised over a partial group."""
    start = time.perf_counter()
    prompts = [prompt_ids(backend, p) for p in problems for _ in range(group_size)]
    params = [
        SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=seed + k)
        for k in range(len(prompts))
    ]
    samples = run_requests(backend, prompts, params)
    rollouts, dropped = [], 0
    for g, problem in enumerate(problems):
        group = samples[g * group_size : (g + 1) * group_size]
        if any(s.error is not None or s.finish_reason == "abort" for s in group):
            dropped += group_size
            continue
        for s, prompt in zip(group, prompts[g * group_size :], strict=False):
            text = backend.tokenizer.decode(s.token_ids, skip_special_tokens=True)
            rollouts.append(
                Rollout(prompt, s.token_ids, s.logprobs, s.weight_versions, reward(text, problem))
            )
    return RolloutBatch(rollouts, time.perf_counter() - start, dropped)


def accuracy(backend: InferenceBackend, problems: list[Problem], max_tokens: int) -> float:
    """Greedy exact-answer accuracy on `problems`."""
    prompts = [prompt_ids(backend, p) for p in problems]
    greedy = [SamplingParams(temperature=0.0, max_tokens=max_tokens)] * len(prompts)
    samples = run_requests(backend, prompts, greedy)
    texts = [backend.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
    return sum(reward(t, p) for t, p in zip(texts, problems, strict=True)) / len(problems)
