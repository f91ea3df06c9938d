"""The batched multi-turn loop: every round, one generation request per active trajectory
(all in one continuous batch), then tools for all of them, then the next round."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Protocol

from rlserve._checks import is_int
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


STOPPED = "stopped by the caller"  # the error of a trajectory a RolloutWatch stopped


class RolloutWatch(Protocol):
    """Stops trajectories of a running rollout (early stopping, time budgets). A stopped
    trajectory ends with finish_reason "abort" (infra_error True, error STOPPED), keeping
    what it sampled; a generation in flight is cancelled in the backend at once, code
    already running in the sandbox finishes first."""

    def finished(self, index: int, traj: Trajectory) -> Iterable[int] | None:
        """Trajectory `index` ended (told once each); the indices of trajectories to stop."""
        ...

    def poll(self) -> Iterable[int] | None:
        """The indices of trajectories to stop now: called while the backend generates
        (see `InferenceBackend.generate`) and before every round."""
        ...


class _RoundCallback:
    """A round's `on_done` with `poll()`, as the backends' cancellation takes it."""

    def __init__(
        self, done: Callable[[int, Sample], list[int]], poll: Callable[[], list[int]]
    ) -> None:
        self._done, self.poll = done, poll

    def __call__(self, k: int, sample: Sample) -> list[int]:
        return self._done(k, sample)


class RolloutLoop:
    """Runs conversations to completion through `backend`, with `mode` deciding what
    happens between generations. Runs on the calling thread; tools run in a pool."""

    def __init__(
        self,
        backend: InferenceBackend,
        mode: Mode,
        params: SamplingParams,
        limits: LoopLimits,
        watch: RolloutWatch | None = None,
    ) -> None:
        self.backend = backend
        self.mode = mode
        self.params = mode.turn_params(params)
        self.limits = limits
        self.watch = watch
        self._stopped: set[int] = set()
        self._new_stops: list[int] = []
        self._told: set[int] = set()
        self._trajs: list[Trajectory] = []

    def run(
        self,
        conversations: list[list[dict[str, Any]]],
        tools: list[dict] | None,
        prompt_ids: list[list[int]] | None = None,
    ) -> list[Trajectory]:
        """`prompt_ids[i]`, when given, is trajectory i's first prompt as it is (an
        already rendered prompt); `conversations[i]` is then only its recorded messages."""
        starts = prompt_ids if prompt_ids is not None else [None] * len(conversations)
        trajs = [self._start(c, tools, ids) for c, ids in zip(conversations, starts, strict=True)]
        self._trajs = trajs
        pool = ThreadPoolExecutor(self.limits.max_tool_workers, thread_name_prefix="rlserve-tools")
        try:
            for turn in range(self.limits.max_assistant_turns):
                self._ask(self.watch.poll() if self.watch is not None else None)
                self._end_stopped()
                active = [(i, t) for i, t in enumerate(trajs) if not t.finished]
                if not active:
                    break
                self._round(active, turn, pool)
                self._tell_finished()
        finally:
            # A hung tool must not hang the rollout: leave its thread behind.
            pool.shutdown(wait=False, cancel_futures=True)
        self._end_stopped()
        for traj in trajs:
            traj.finish("max_turns")  # a no-op for every trajectory that already ended
        self._tell_finished()
        return trajs

    def _ask(self, indices: Iterable[int] | None) -> None:
        """Note trajectories the watch asked to stop."""
        for index in indices or ():
            if not (is_int(index) and 0 <= index < len(self._trajs)):
                raise ValueError(
                    f"a RolloutWatch must return trajectory indices in [0, {len(self._trajs)}), "
                    f"got {index!r}"
                )
            if index not in self._stopped:
                self._stopped.add(index)
                self._new_stops.append(index)

    def _end_stopped(self) -> None:
        for index in self._stopped:
            self._trajs[index].finish("abort", STOPPED, infra=True)

    def _tell_finished(self) -> None:
        for index, traj in enumerate(self._trajs):
            self._tell(index, traj)

    def _tell(self, index: int, traj: Trajectory) -> None:
        if self.watch is not None and traj.finished and index not in self._told:
            self._told.add(index)
            self._ask(self.watch.finished(index, traj))

    def _start(
        self,
        conversation: list[dict[str, Any]],
        tools: list[dict] | None,
        prompt_ids: list[int] | None = None,
    ) -> Trajectory:
        messages = [dict(m) for m in conversation]
        prompt = (
            list(prompt_ids)
            if prompt_ids is not None
            else first_prompt_ids(self.backend.tokenizer, messages, tools)
        )
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
        index_of: list[int] = []  # request k -> its trajectory's index
        for index, traj in active:
            params = self._params_for(index, traj)
            if params is None:
                traj.finish("max_total_tokens")
                continue
            requests.append((traj.token_ids, params))
            owners.append(traj)
            index_of.append(index)
        jobs: dict[int, tuple[Future, Any]] = {}
        k_of = {index: k for k, index in enumerate(index_of)}

        def cancels() -> list[int]:
            new, self._new_stops = self._new_stops, []
            return [k_of[index] for index in new if index in k_of]

        def on_done(k: int, sample: Sample) -> list[int]:
            plan = self._record(owners[k], sample, turn, requests[k][1])
            if plan is not None:  # start its tools while the rest of the batch generates
                jobs[k] = (pool.submit(self.mode.execute, plan), plan)
            self._tell(index_of[k], owners[k])
            return cancels()

        def poll() -> list[int]:
            self._ask(self.watch.poll() if self.watch is not None else None)
            return cancels()

        if requests:
            self.backend.generate(requests, _RoundCallback(on_done, poll))
        done, _ = wait([future for future, _ in jobs.values()], timeout=self.limits.tool_timeout_s)
        for k, (future, plan) in jobs.items():
            if index_of[k] in self._stopped:
                owners[k].finish("abort", STOPPED, infra=True)
            elif future in done:
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
