"""Tool calling: parse tool calls out of model output (one-shot or while streaming), force
them for `tool_choice`, write replies and results as OpenAI messages, run them with
user-supplied executors."""

from rlserve.tools.choice import added_token_texts, forced_call_grammar, forced_call_prefixes
from rlserve.tools.executors import (
    ToolError,
    ToolExecutor,
    ToolResults,
    calls_in_order,
    execute_calls,
)
from rlserve.tools.generate import batch_generate_with_tools
from rlserve.tools.messages import assistant_message, tool_message
from rlserve.tools.parsers import (
    PARSERS,
    ParseResult,
    ToolCall,
    ToolCallError,
    ToolParser,
    get_parser,
    parse_tool_calls,
    validate_tools,
)
from rlserve.tools.streaming import StreamEvent, StreamingToolParser

__all__ = [
    "PARSERS",
    "ParseResult",
    "StreamEvent",
    "StreamingToolParser",
    "ToolCall",
    "ToolCallError",
    "ToolError",
    "ToolExecutor",
    "ToolParser",
    "ToolResults",
    "assistant_message",
    "batch_generate_with_tools",
    "calls_in_order",
    "execute_calls",
    "added_token_texts",
    "forced_call_grammar",
    "forced_call_prefixes",
    "get_parser",
    "parse_tool_calls",
    "tool_message",
    "validate_tools",
]
