"""The batched multi-turn loop: every round, one generation request per active trajectory
(all in one continuous batch), then tools for all of them, then the next round."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from rlserve.backends.base import InferenceBackend, Request, Sample
from rlserve.rl.chat_turns import TemplateError, first_prompt_ids
from rlserve.rl.modes import Mode
from rlserve.rl.trajectory import Trajectory
from rlserve.sampling_params import SamplingParams


@dataclass
class LoopLimits:
    max_assistant_turns: int
    budget: int | None  # max prompt + completion tokens; None: no limit
    tool_timeout_s: float | None
    max_tool_workers: int


class RolloutLoop:
    """Runs conversations to completion through `backend`, with `mode` deciding what
    happens between generations. Runs on the calling thread; tools run in a pool."""

    def __init__(
        self, backend: InferenceBackend, mode: Mode, params: SamplingParams, limits: LoopLimits
    ) -> None:
        self.backend = backend
        self.mode = mode
        self.params = mode.turn_params(params)
        self.limits = limits

    def run(
        self, conversations: list[list[dict[str, Any]]], tools: list[dict] | None
    ) -> list[Trajectory]:
        trajs = [self._start(c, tools) for c in conversations]
        pool = ThreadPoolExecutor(self.limits.max_tool_workers, thread_name_prefix="rlserve-tools")
        try:
            for turn in range(self.limits.max_assistant_turns):
                active = [(i, t) for i, t in enumerate(trajs) if not t.finished]
                if not active:
                    break
                self._round(active, turn, pool)
        finally:
            # A hung tool must not hang the rollout: leave its thread behind.
            pool.shutdown(wait=False, cancel_futures=True)
        for traj in trajs:
            traj.finish("max_turns")  # a no-op for every trajectory that already ended
        return trajs

    def _start(self, conversation: list[dict[str, Any]], tools: list[dict] | None) -> Trajectory:
        messages = [dict(m) for m in conversation]
        prompt = first_prompt_ids(self.backend.tokenizer, messages, tools)
        traj = Trajectory(prompt, messages=messages, template_messages=[dict(m) for m in messages])
        budget = self.limits.budget
        if budget is not None and len(prompt) >= budget:
            traj.finish(
                "max_total_tokens",
                infra=True,
                error=f"the prompt is {len(prompt)} tokens; the budget is {budget}",
            )
        return traj

    def _round(
        self, active: list[tuple[int, Trajectory]], turn: int, pool: ThreadPoolExecutor
    ) -> None:
        requests: list[Request] = []
        owners: list[Trajectory] = []
        for index, traj in active:
            params = self._params_for(index, traj)
            if params is None:
                traj.finish("max_total_tokens")
                continue
            requests.append((traj.token_ids, params))
            owners.append(traj)
        jobs: dict[int, tuple[Future, Any]] = {}

        def on_done(k: int, sample: Sample) -> None:
            plan = self._record(owners[k], sample, turn, requests[k][1])
            if plan is not None:  # start its tools while the rest of the batch generates
                jobs[k] = (pool.submit(self.mode.execute, plan), plan)

        if requests:
            self.backend.generate(requests, on_done)
        done, _ = wait([future for future, _ in jobs.values()], timeout=self.limits.tool_timeout_s)
        for k, (future, plan) in jobs.items():
            if future in done:
                self._continue(owners[k], plan, future, turn)
            else:
                owners[k].finish(
                    "infra_error",
                    infra=True,
                    error=f"tools took longer than {self.limits.tool_timeout_s:g} s",
                )

    def _params_for(self, index: int, traj: Trajectory) -> SamplingParams | None:
        """This round's params: max_tokens clipped to the budget; a seed offset by the
        trajectory's index, so copies of one conversation (a GRPO group) differ."""
        p = self.params
        max_tokens = p.max_tokens
        if self.limits.budget is not None:
            max_tokens = min(max_tokens, self.limits.budget - len(traj.token_ids))
            if max_tokens <= 0:
                return None
        seed = None if p.seed is None else p.seed + index
        return replace(
            p, max_tokens=max_tokens, min_tokens=min(p.min_tokens, max_tokens), seed=seed
        )

    def _record(
        self, traj: Trajectory, sample: Sample, turn: int, params: SamplingParams
    ) -> Any | None:
        """Append a finished generation; the mode's plan if tools should run next."""
        if sample.error is not None:
            traj.finish("infra_error", sample.error, infra=True)
            return None
        traj.num_turns += 1
        traj.add_sampled(
            sample.token_ids, sample.logprobs, sample.weight_versions, turn, sample.finish_reason
        )
        plan = self.mode.after_generation(traj, sample)
        reason = sample.finish_reason
        if reason == "abort":
            traj.finish("abort", f"generation aborted: {sample.stop_reason}", infra=True)
        elif reason == "length":
            clipped = params.max_tokens < self.params.max_tokens
            traj.finish("max_total_tokens" if clipped else "length")
        elif reason != "stop":
            traj.finish("infra_error", f"unexpected finish reason {reason!r}", infra=True)
        elif plan is None:
            traj.finish("stop")
        elif turn + 1 >= self.limits.max_assistant_turns:
            traj.finish("max_turns")
        else:
            return plan
        return None

    def _continue(self, traj: Trajectory, plan: Any, future: Future, turn: int) -> None:
        try:
            outcome = future.result()
        except Exception as exc:  # a failing executor or sandbox, not the model
            traj.finish("infra_error", f"{type(exc).__name__}: {exc}", infra=True)
            return
        try:
            cont = self.mode.continuation(traj, plan, outcome)
        except TemplateError as exc:
            traj.finish("infra_error", f"chat template: {exc}", infra=True)
            return
        if cont.infra_error is not None or cont.insert is None:
            traj.finish("infra_error", cont.infra_error, infra=True)
            return
        budget = self.limits.budget
        if budget is not None and len(traj.token_ids) + len(cont.insert.token_ids) >= budget:
            traj.finish("max_total_tokens")
            return
        traj.add_inserted(cont.insert.token_ids, cont.insert.kinds, turn)
        traj.template_exact = traj.template_exact and cont.insert.exact
        self.mode.accept(traj, cont)
