"""What happens between generations: the `Mode` protocol and chat tool calling.

The rollout loop calls, per trajectory and round: `after_generation` (calling thread:
record the sampled turn, decide what to run; None ends the trajectory), `execute` (a
worker thread: run tools; no tokenizer use here), `continuation` (calling thread: the
tokens to insert), then `accept` once those tokens are appended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlserve.backends.base import Sample
from rlserve.rl.chat_turns import Insert, tool_turn_insert
from rlserve.rl.tokens import decode
from rlserve.rl.trajectory import Trajectory
from rlserve.sampling_params import SamplingParams
from rlserve.tools import (
    ToolExecutor,
    ToolResults,
    assistant_message,
    calls_in_order,
    execute_calls,
    get_parser,
)


@dataclass
class Continuation:
    """Tokens to insert (loss mask 0) and what they stand for; or an infrastructure
    error that ends the trajectory instead."""

    insert: Insert | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    infra_error: str | None = None


class Mode(Protocol):
    def turn_params(self, params: SamplingParams) -> SamplingParams: ...

    def after_generation(self, traj: Trajectory, sample: Sample) -> Any | None: ...

    def execute(self, plan: Any) -> Any: ...

    def continuation(self, traj: Trajectory, plan: Any, outcome: Any) -> Continuation: ...

    def accept(self, traj: Trajectory, cont: Continuation) -> None: ...


def sampled_text(tokenizer: Any, sample: Sample, keep_last: bool = False) -> str:
    """Exact text of the sampled tokens, without a final EOS / stop token (the chat
    template writes the end of the turn itself) unless `keep_last`."""
    ids = sample.token_ids
    if sample.ends_with_stop_token and not keep_last:
        ids = ids[:-1]
    return decode(tokenizer, ids)


class ChatToolMode:
    """Assistant turns whose tool calls (parsed by `parser`) are run by `executors`; the
    results come back as `tool` messages rendered by the chat template."""

    def __init__(
        self,
        tokenizer: Any,
        tools: list[dict] | None,
        executors: Mapping[str, ToolExecutor],
        parser: str = "hermes",
    ) -> None:
        self.tokenizer = tokenizer
        self.tools = tools
        self.executors = executors
        self.parser = get_parser(parser)

    def turn_params(self, params: SamplingParams) -> SamplingParams:
        return params

    def after_generation(self, traj: Trajectory, sample: Sample) -> list | None:
        text = sampled_text(self.tokenizer, sample)
        parsed = self.parser.parse(text, self.tools)
        traj.messages.append(assistant_message(parsed))
        traj.template_messages.append({"role": "assistant", "content": text})
        return calls_in_order(parsed) or None

    def execute(self, plan: list) -> ToolResults:
        return execute_calls(plan, self.executors)

    def continuation(self, traj: Trajectory, plan: list, outcome: ToolResults) -> Continuation:
        if outcome.infra_error is not None:
            return Continuation(infra_error=outcome.infra_error)
        insert = tool_turn_insert(
            self.tokenizer, traj.token_ids, traj.template_messages, outcome.messages, self.tools
        )
        return Continuation(insert, outcome.messages)

    def accept(self, traj: Trajectory, cont: Continuation) -> None:
        traj.messages += [dict(m) for m in cont.messages]
        traj.template_messages += [dict(m) for m in cont.messages]
