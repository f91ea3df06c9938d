"""Multi-turn rollouts with tools: generate -> parse -> execute -> append -> generate.

Tokens in, tokens out (DESIGN contract 4): each round's prompt is the previous token
stream plus the new tokens; sampled tokens are never re-tokenised; the tokens between
turns come from the chat template (see `rlserve.rl.chat_turns`). All trajectories of a
call advance together, so a GRPO group shares one batch per round.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rlserve._checks import check_number, check_positive_int, is_token_ids
from rlserve.backends import as_backend
from rlserve.rl.loop import LoopLimits, RolloutLoop, RolloutWatch
from rlserve.rl.modes import ChatToolMode, Mode
from rlserve.rl.tir import TIRConfig
from rlserve.rl.tir_mode import TIRMode
from rlserve.rl.trajectory import Trajectory
from rlserve.sampling_params import SamplingParams
from rlserve.sandbox import Sandbox
from rlserve.tools import ToolExecutor, get_parser

DEFAULT_PARAMS = SamplingParams(max_tokens=512)


@dataclass(frozen=True)
class RolloutConfig:
    """Loop settings. `max_assistant_turns`: generation rounds per trajectory (in TIR mode
    one assistant turn holds every round). `max_total_tokens`: prompt + completion never
    exceed it (default and cap: the model's context). `parser`: the tool-call format.
    `tool_timeout_s`: how long a round waits, once generation ends, for its tools (None:
    forever); slower tools are an infrastructure error. `tir`: tool-integrated reasoning
    (code in the sandbox) instead of chat tool calls."""

    max_assistant_turns: int = 8
    max_total_tokens: int | None = None
    parser: str = "hermes"
    lora_name: str | None = None
    tool_timeout_s: float | None = None
    max_tool_workers: int = 16
    tir: TIRConfig | None = None

    def __post_init__(self) -> None:
        check_positive_int("max_assistant_turns", self.max_assistant_turns)
        check_positive_int("max_tool_workers", self.max_tool_workers)
        if self.max_total_tokens is not None:
            check_positive_int("max_total_tokens", self.max_total_tokens)
        get_parser(self.parser)  # ValueError naming the known formats
        if self.lora_name is not None and (
            not isinstance(self.lora_name, str) or not self.lora_name
        ):
            raise ValueError(f"lora_name must be a non-empty string, got {self.lora_name!r}")
        if self.tool_timeout_s is not None:
            check_number("tool_timeout_s", self.tool_timeout_s, positive=True)
        if self.tir is not None and not isinstance(self.tir, TIRConfig):
            raise ValueError(f"tir must be a TIRConfig, got {type(self.tir).__name__}")


def rollout(
    engine_or_client: Any,
    messages: list[dict[str, Any]],
    tools: list[dict] | None = None,
    tool_executors: Mapping[str, ToolExecutor] | None = None,
    max_assistant_turns: int = 8,
    params: SamplingParams | None = None,
    **options: Any,
) -> Trajectory:
    """Run one conversation to the end; `options` are `rollout_batch`'s keywords."""
    return rollout_batch(
        engine_or_client, [messages], tools, tool_executors, max_assistant_turns, params, **options
    )[0]


def rollout_batch(
    engine_or_client: Any,
    conversations: list[list[dict[str, Any]]],
    tools: list[dict] | None = None,
    tool_executors: Mapping[str, ToolExecutor] | None = None,
    max_assistant_turns: int = 8,
    params: SamplingParams | None = None,
    *,
    max_total_tokens: int | None = None,
    parser: str = "hermes",
    lora_name: str | None = None,
    tool_timeout_s: float | None = None,
    max_tool_workers: int = 16,
    tir: TIRConfig | None = None,
    sandbox: Sandbox | None = None,
    watch: RolloutWatch | None = None,
    prompt_ids: list[list[int]] | None = None,
) -> list[Trajectory]:
    """Run many conversations together; one `Trajectory` each, in order.

    `engine_or_client`: an `Engine` (driven on this thread; it must have no other
    requests in flight), a sync `rlserve.client.Client` with a tokenizer (token-id
    prompts to `/v1/completions`), or any `rlserve.backends.InferenceBackend`. `tools`:
    OpenAI-style definitions shown to the model. `tool_executors`: name ->
    `fn(**arguments)` (sync or async) returning the tool's output; raise `ToolError` for a
    failure the model caused. `params`: per round (n = 1; a set `seed` is offset by the
    conversation's index). For a GRPO group, pass the same conversation several times.
    With `tir`, code between its markers runs in `sandbox` (default: a fresh `Sandbox()`
    for this call) and `tool_executors` must be None. `watch`: a `RolloutWatch` told of
    each trajectory as it ends, which may stop others (early stopping, time budgets).
    `prompt_ids`: each trajectory's first prompt as token ids (already rendered, e.g. by
    a prompt template), used instead of rendering its conversation.
    """
    config = RolloutConfig(
        max_assistant_turns,
        max_total_tokens,
        parser,
        lora_name,
        tool_timeout_s,
        max_tool_workers,
        tir,
    )
    params = _check_params(params)
    conversations = _check_conversations(conversations)
    prompt_ids = _check_prompt_ids(prompt_ids, len(conversations))
    backend = as_backend(engine_or_client, lora_name)
    budget = _budget(config.max_total_tokens, backend.max_model_len)
    limits = LoopLimits(
        config.max_assistant_turns, budget, config.tool_timeout_s, config.max_tool_workers
    )
    with _mode(backend.tokenizer, tools, tool_executors, config, sandbox) as mode:
        loop = RolloutLoop(backend, mode, params, limits, watch)
        return loop.run(conversations, tools, prompt_ids)


@contextmanager
def _mode(
    tokenizer: Any,
    tools: list[dict] | None,
    executors: Mapping[str, ToolExecutor] | None,
    config: RolloutConfig,
    sandbox: Sandbox | None,
) -> Iterator[Mode]:
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise ValueError("tools must be a list of OpenAI-style tool definitions (dicts)")
    if config.tir is None:
        yield ChatToolMode(tokenizer, tools, _check_executors(executors), config.parser)
        return
    if executors:
        raise ValueError("in TIR mode code runs in the sandbox: pass tool_executors=None")
    owned = sandbox is None
    box = Sandbox() if owned else sandbox
    try:
        yield TIRMode(tokenizer, config.tir, box)
    finally:
        if owned:
            box.close()


def _budget(max_total_tokens: int | None, max_model_len: int | None) -> int | None:
    limits = [n for n in (max_total_tokens, max_model_len) if n is not None]
    return min(limits) if limits else None


def _check_params(params: SamplingParams | None) -> SamplingParams:
    params = DEFAULT_PARAMS if params is None else params
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
    if params.n != 1:
        raise ValueError("rollouts take n = 1; for a group, pass the conversation n times")
    return params


def _check_conversations(conversations: Any) -> list[list[dict[str, Any]]]:
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("conversations must be a non-empty list of message lists")
    for conv in conversations:
        if not isinstance(conv, list) or not conv or not all(isinstance(m, dict) for m in conv):
            raise ValueError("each conversation must be a non-empty list of message dicts")
    return conversations


def _check_prompt_ids(prompt_ids: Any, count: int) -> list[list[int]] | None:
    if prompt_ids is None:
        return None
    if not isinstance(prompt_ids, list) or len(prompt_ids) != count:
        raise ValueError(f"prompt_ids must be a list of {count} token-id lists, one a conversation")
    for k, ids in enumerate(prompt_ids):
        if not (is_token_ids(ids) and ids):
            raise ValueError(f"prompt_ids[{k}] must be a non-empty list of token ids")
    return [list(ids) for ids in prompt_ids]


def _check_executors(executors: Mapping[str, ToolExecutor] | None) -> dict[str, ToolExecutor]:
    executors = dict(executors or {})
    for name, fn in executors.items():
        if not isinstance(name, str) or not callable(fn):
            raise ValueError(
                f"tool_executors must map names to callables; got {name!r}: {type(fn).__name__}"
            )
    return executors
