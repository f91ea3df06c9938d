"""Chat tool calls in OpenAI's shape, parsed by `rlserve.tools` (whole text or streamed).

Only the message text changes: token ids and logprobs still cover every sampled token,
so training data is the same with or without parsing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from functools import lru_cache
from typing import Any

from rlserve._checks import ParamError
from rlserve.engine.structured import StructuredOutput, check_structured
from rlserve.sampling_params import SamplingParams
from rlserve.server.errors import APIError
from rlserve.tools import StreamingToolParser, parse_tool_calls, validate_tools
from rlserve.tools.choice import (
    added_token_texts,
    forced_call_grammar,
    forced_tool_names,
)
from rlserve.tools.parsers import ToolIndex
from rlserve.tools.parsers.reasoning import THINK_OPEN

_MAX_GRAMMAR_ERROR = 400  # llguidance quotes the grammar in its errors


def prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether the chat template already opened a `<think>` block for the reply."""
    return prompt_text.rstrip().endswith(THINK_OPEN)


def finish_reason(reason: str | None, made_calls: bool) -> str | None:
    """OpenAI reports "tool_calls" when the model stopped after calling tools."""
    return "tool_calls" if made_calls and reason == "stop" else reason


def force_tool_choice(
    params: SamplingParams,
    request: Any,
    parser: str | None,
    think_open: bool,
    tokenizer: Any,
) -> SamplingParams:
    """`params` forcing the call a chat request's `tool_choice` asks for (400 naming
    `tool_choice` or `tools` if impossible). The whole call is a grammar in the parser's
    format (the tool's `parameters` constrain the arguments as far as the format's
    notation carries them: `rlserve.tools.call_grammar`) that replaces any
    `response_format` constraint, as vLLM's tool schema does."""
    choice, tools = request.tool_choice, request.tools
    try:
        if not forced_tool_names(choice, tools):
            return params
    except ValueError as exc:
        raise APIError(400, str(exc), param="tool_choice") from exc
    if not parser:
        raise APIError(
            400, "tool_choice needs a server started with --tool-call-parser", param="tool_choice"
        )
    grammar = forced_call_grammar(
        choice,
        tools,
        parser,
        think_open=think_open,
        token_texts=_added_tokens(tokenizer),
        parallel_tool_calls=request.parallel_tool_calls,
    )
    if grammar is None:  # nothing forced after all
        return params
    return replace(
        params, structured=_checked(StructuredOutput(grammar=grammar)), prefix_choices=[]
    )


def _checked(structured: StructuredOutput) -> StructuredOutput:
    try:
        check_structured(structured)
    except ParamError as exc:
        reason = str(exc).removeprefix("structured: invalid grammar: ")[:_MAX_GRAMMAR_ERROR]
        raise APIError(
            400,
            f"the parameters of a forced tool are not a usable JSON schema: {reason}",
            param="tools",
        ) from exc
    return structured


@lru_cache(maxsize=8)
def _added_tokens(tokenizer: Any) -> tuple[str, ...]:
    return added_token_texts(tokenizer)


def check_request_tools(tools: Any) -> None:
    """400 naming the bad entry when a request's `tools` are unusable; call it before the
    request is submitted. Over HTTP each tool must be OpenAI's `{"type": "function",
    "function": {...}}` (the tools layer also takes bare function objects)."""
    for i, tool in enumerate(tools or []):
        if isinstance(tool, dict) and not isinstance(tool.get("function"), dict):
            raise APIError(400, f"tools[{i}] needs a 'function' object", param="tools")
    try:
        validate_tools(tools)
    except ValueError as exc:
        raise APIError(400, str(exc), param="tools") from exc


def trailing_blank_start(text: str, special_tokens: Collection[str] = ()) -> int:
    """Where the run of whitespace and special-token texts (`special_tokens`, e.g. the
    end-of-turn token that ends the text with `skip_special_tokens: false`) that ends
    `text` begins."""
    i = len(text)
    while i > 0:
        if text[i - 1].isspace():
            i -= 1
            continue
        token = next((t for t in special_tokens if t and text.endswith(t, 0, i)), None)
        if token is None:
            break
        i -= len(token)
    return i


def partial_special_start(text: str, special_tokens: Collection[str] = ()) -> int:
    """Where an unfinished special token ending `text` begins; `len(text)` when none does."""
    longest = max((len(t) for t in special_tokens), default=0)
    for start in range(max(0, len(text) - longest + 1), len(text)):
        tail = text[start:]
        if any(len(t) > len(tail) and t.startswith(tail) for t in special_tokens):
            return start
    return len(text)


class ToolCallFormat:
    """How one request's replies are split into content, reasoning and tool calls.

    `tools` must have passed `check_request_tools` (as `render_prompt` does before a
    request is submitted); they are indexed once here for every reply of the request. In a
    reply that calls tools, the whitespace and special tokens that end its content (the
    end-of-turn token when `skip_special_tokens` is false) are not content: a reply that
    is only calls has `content: null`, as OpenAI and vLLM send it, streamed or not.
    `special_tokens`: the tokenizer's special-token texts; other text, `<|name|>`-shaped
    or not, stays content.
    """

    def __init__(
        self,
        parser: str,
        tools: list[dict[str, Any]],
        think_open: bool,
        special_tokens: Collection[str] = (),
    ) -> None:
        self.parser = parser
        self.tools = ToolIndex(tools)
        self.think_open = think_open
        self.special_tokens = tuple(t for t in special_tokens if isinstance(t, str) and t)
        self._streams: dict[int, StreamingToolParser] = {}
        self._held: dict[int, str] = {}  # trailing blank content not sent yet
        self.made_calls: set[int] = set()

    def message(self, text: str) -> dict[str, Any]:
        """Assistant message fields for a whole reply."""
        parsed = parse_tool_calls(text, self.parser, self.tools, think_open=self.think_open)
        calls = [call.to_openai() for call in parsed.calls]
        content: str | None = parsed.content
        if calls:
            content = content[: trailing_blank_start(content, self.special_tokens)] or None
        fields: dict[str, Any] = {"content": content}
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
        content = ""
        for event in events:
            if event.kind == "content":
                content += event.text
            elif event.kind == "reasoning":
                fields["reasoning_content"] = fields.get("reasoning_content", "") + event.text
            elif event.kind == "tool_call" and event.call is not None:
                self.made_calls.add(index)
                call = {"index": event.index, **event.call.to_openai()}
                fields.setdefault("tool_calls", []).append(call)
        content = self._settled_content(index, content, final)
        if content:
            fields["content"] = content
        return fields

    def _settled_content(self, index: int, content: str, final: bool) -> str:
        """Content that can be sent now: a trailing run of whitespace and special tokens
        (or the start of one) waits until more content follows it, and is dropped at the
        end of a reply that called tools, so the deltas add up to `message()`'s content."""
        pending = self._held.pop(index, "") + content
        if final:
            if index not in self.made_calls:
                return pending
            return pending[: trailing_blank_start(pending, self.special_tokens)]
        partial = partial_special_start(pending, self.special_tokens)
        cut = trailing_blank_start(pending[:partial], self.special_tokens)
        if cut < len(pending):
            self._held[index] = pending[cut:]
        return pending[:cut]
