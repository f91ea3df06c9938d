"""Chat tool calls in OpenAI's shape, parsed by `rlserve.tools` (whole text or streamed).

Only the message text changes: token ids and logprobs still cover every sampled token,
so training data is the same with or without parsing.
"""

from __future__ import annotations

from typing import Any

from rlserve.tools import StreamingToolParser, parse_tool_calls
from rlserve.tools.parsers.reasoning import THINK_OPEN


def prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether the chat template already opened a `<think>` block for the reply."""
    return prompt_text.rstrip().endswith(THINK_OPEN)


def finish_reason(reason: str | None, made_calls: bool) -> str | None:
    """OpenAI reports "tool_calls" when the model stopped after calling tools."""
    return "tool_calls" if made_calls and reason == "stop" else reason


class ToolCallFormat:
    """How one request's replies are split into content, reasoning and tool calls."""

    def __init__(self, parser: str, tools: list[dict[str, Any]], think_open: bool) -> None:
        self.parser = parser
        self.tools = tools
        self.think_open = think_open
        self._streams: dict[int, StreamingToolParser] = {}
        self.made_calls: set[int] = set()

    def message(self, text: str) -> dict[str, Any]:
        """Assistant message fields for a whole reply."""
        parsed = parse_tool_calls(text, self.parser, self.tools, think_open=self.think_open)
        calls = [call.to_openai() for call in parsed.calls]
        fields: dict[str, Any] = {
            "content": parsed.content if parsed.content or not calls else None
        }
        if calls:
            fields["tool_calls"] = calls
        if parsed.reasoning:
            fields["reasoning_content"] = parsed.reasoning
        return fields

    def delta(self, index: int, text: str, final: bool) -> dict[str, Any]:
        """Stream delta fields for choice `index` after `text` arrived (`final`: it ended)."""
        stream = self._streams.get(index)
        if stream is None:
            stream = StreamingToolParser(self.parser, self.tools, think_open=self.think_open)
            self._streams[index] = stream
        events = stream.feed(text) + (stream.finish() if final else [])
        fields: dict[str, Any] = {}
        for event in events:
            if event.kind == "content":
                fields["content"] = fields.get("content", "") + event.text
            elif event.kind == "reasoning":
                fields["reasoning_content"] = fields.get("reasoning_content", "") + event.text
            elif event.kind == "tool_call" and event.call is not None:
                self.made_calls.add(index)
                call = {"index": event.index, **event.call.to_openai()}
                fields.setdefault("tool_calls", []).append(call)
        return fields
