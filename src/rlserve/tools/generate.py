"""Generate with tools offered and get the parsed tool calls beside each completion."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlserve.tools.parsers import get_parser, validate_tools

if TYPE_CHECKING:  # the engine sits below: it is passed in, never imported
    from rlserve import Engine, RequestOutput, SamplingParams


def batch_generate_with_tools(
    engine: Engine,
    prompts: list[str] | list[list[dict]],
    tools: list[dict],
    params: SamplingParams | None = None,
    parser: str = "hermes",
) -> list[RequestOutput]:
    """Chat completions for many prompts (user strings or message lists) with `tools`
    offered; every completion carries the calls parsed from its text (`tool_calls`) and
    those that failed to parse (`tool_call_errors`), in the `parser` format. The tools and
    the parser are checked before anything is generated."""
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings or message lists")
    if not tools:
        raise ValueError("tools must be a non-empty list of OpenAI-style tool definitions")
    validate_tools(tools)  # parsing the replies needs the tools' names
    tool_parser = get_parser(parser)
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    outs = engine.chat(conversations, params, tools=tools)
    for out in outs:
        for completion in out.outputs:
            parsed = tool_parser.parse(completion.text, tools)
            completion.tool_calls, completion.tool_call_errors = parsed.calls, parsed.errors
    return outs
