"""A parsed reply and tool results as OpenAI chat messages (`assistant`, `tool`)."""

from __future__ import annotations

from typing import Any

from rlserve.tools.parsers.types import ParseResult


def assistant_message(parsed: ParseResult) -> dict[str, Any]:
    """The assistant turn in OpenAI shape: content without call markup, `tool_calls`, and
    `reasoning_content` when the reply reasoned."""
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if parsed.reasoning:
        message["reasoning_content"] = parsed.reasoning
    if parsed.calls:
        message["tool_calls"] = [call.to_openai() for call in parsed.calls]
    return message


def tool_message(
    content: str,
    name: str | None = None,
    call_id: str | None = None,
) -> dict[str, Any]:
    """A `role: tool` message in OpenAI shape."""
    message: dict[str, Any] = {"role": "tool"}
    if call_id is not None:
        message["tool_call_id"] = call_id
    if name is not None:
        message["name"] = name
    message["content"] = content
    return message
