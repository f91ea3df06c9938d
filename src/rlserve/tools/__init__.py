"""Tool calling: parse tool calls out of model output, one-shot or while streaming."""

from rlserve.tools.choice import forced_call_prefixes
from rlserve.tools.generate import batch_generate_with_tools
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
    "ToolParser",
    "batch_generate_with_tools",
    "forced_call_prefixes",
    "get_parser",
    "parse_tool_calls",
    "validate_tools",
]
