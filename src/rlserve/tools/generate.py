"""Generate with tools offered and get the parsed tool calls beside each completion."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlserve import Engine, RequestOutput, SamplingParams


def batch_generate_with_tools(
    engine: Engine,
    prompts: list[str] | list[list[dict]],
    tools: list[dict],
    params: SamplingParams | None = None,
    parser: str = "hermes",
) -> list[RequestOutput]:
    """Chat completions for many prompts (user strings or message lists) with `tools`
    offered; every completion carries `tool_calls` and `tool_call_errors`. `Engine.chat`
    checks the tools before generating."""
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings or message lists")
    if not tools:
        raise ValueError("tools must be a non-empty list of OpenAI-style tool definitions")
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    return engine.chat(conversations, params, tools=tools, tool_parser=parser)
