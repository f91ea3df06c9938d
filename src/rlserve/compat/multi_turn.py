"""`rollout.multi_turn`: conversations with tool calls, run by rlserve's rollout loop.

The tool calls in each reply (in `multi_turn.format`) are executed, their results go back
as `tool` messages through the chat template, and generation goes on, for at most
`max_assistant_turns` replies. Token in, token out: the response is the token stream after
the prompt, and its mask is 1 only on tokens the model sampled (`rlserve.rl`'s loss mask).
As in VERL, the stream is cut to `response_length` tokens, and the prompt plus response
never exceed prompt_length + response_length tokens (nor the model's context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlserve.backends import InferenceBackend, Sample
from rlserve.compat.engine_config import InferenceEngineConfig
from rlserve.compat.generation_output import Response
from rlserve.compat.tool_config import ToolSet
from rlserve.rl.loop import LoopLimits, RolloutLoop
from rlserve.rl.modes import ChatToolMode
from rlserve.rl.trajectory import Trajectory
from rlserve.sampling_params import SamplingParams
from rlserve.tools import ToolCall

MAX_TOOL_WORKERS = 16


class LimitedCallsMode(ChatToolMode):
    """Chat tool calling that runs at most `max_calls` calls of a reply (VERL's
    `max_parallel_calls`); the calls past it are dropped from the assistant message too."""

    def __init__(
        self,
        tokenizer: Any,
        tools: list[dict] | None,
        executors: dict,
        parser: str,
        max_calls: int,
    ) -> None:
        super().__init__(tokenizer, tools, executors, parser)
        self.max_calls = max_calls

    def after_generation(self, traj: Trajectory, sample: Sample) -> list | None:
        plan = super().after_generation(traj, sample)
        if not plan or len(plan) <= self.max_calls:
            return plan
        plan = plan[: self.max_calls]
        kept = {item.id for item in plan if isinstance(item, ToolCall)}
        message = traj.messages[-1]
        message["tool_calls"] = [c for c in message.get("tool_calls", []) if c["id"] in kept]
        if not message["tool_calls"]:
            del message["tool_calls"]
        return plan


@dataclass
class MultiTurnRunner:
    """Runs conversations with `tools` on `backend` under `config`'s limits."""

    backend: InferenceBackend
    tools: ToolSet
    config: InferenceEngineConfig

    @property
    def schemas(self) -> list[dict] | None:
        """The tool definitions shown to the model (None: no tools)."""
        return self.tools.schemas or None

    def max_turns(self) -> int:
        rollout = self.config.rollout
        turns = rollout.multi_turn.max_assistant_turns
        if turns is None:  # VERL's default: a third of the whole length
            turns = max(1, (rollout.prompt_length + rollout.response_length) // 3)
        return turns

    def budget(self) -> int:
        rollout = self.config.rollout
        total = rollout.prompt_length + rollout.response_length
        context = self.backend.max_model_len
        return total if context is None else min(total, context)

    def run(
        self, conversations: list[list[dict[str, Any]]], params: SamplingParams
    ) -> list[Response]:
        """One response per conversation, in order (`params.n` must be 1)."""
        options = self.config.rollout.multi_turn
        mode = LimitedCallsMode(
            self.backend.tokenizer,
            self.schemas,
            self.tools.executors,
            options.format,
            options.max_parallel_calls,
        )
        limits = LoopLimits(self.max_turns(), self.budget(), None, MAX_TOOL_WORKERS)
        trajectories = RolloutLoop(self.backend, mode, params, limits).run(
            conversations, self.schemas
        )
        return [self._response(t) for t in trajectories]

    def _response(self, traj: Trajectory) -> Response:
        cut = self.config.rollout.response_length
        return Response(
            prompt_ids=list(traj.prompt_ids),
            token_ids=traj.completion_ids[:cut],
            mask=traj.loss_mask[:cut],
            logprobs=traj.logprobs[:cut],
            weight_versions=traj.weight_versions[:cut],
            finish_reason=traj.finish_reason,
            error=traj.error if traj.infra_error else None,
            extra={
                "messages": traj.messages,
                "num_turns": traj.num_turns,
                "segments": [vars(s).copy() for s in traj.segments],
                "truncated": len(traj.completion_ids) > cut,
            },
        )
