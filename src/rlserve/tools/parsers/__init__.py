"""Tool-call parsers: one module per output format, one registry.

``get_parser(name).parse(text, tools)`` returns a :class:`ParseResult`; for token streams
use :class:`rlserve.tools.StreamingToolParser`, which yields the same result incrementally.
"""

from __future__ import annotations

from rlserve.tools.parsers.base import ToolParser
from rlserve.tools.parsers.hermes import HermesParser
from rlserve.tools.parsers.json_format import JsonParser
from rlserve.tools.parsers.llama3 import Llama3JsonParser
from rlserve.tools.parsers.pythonic import PythonicParser
from rlserve.tools.parsers.qwen3_coder import Qwen3CoderParser
from rlserve.tools.parsers.schema import ToolIndex, Tools, validate_tools
from rlserve.tools.parsers.types import ParseResult, ToolCall, ToolCallError, new_call_id
from rlserve.tools.parsers.xml_format import XmlParser

PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "json": JsonParser,
    "xml": XmlParser,
    "pythonic": PythonicParser,
    "function": PythonicParser,  # alias
    "qwen3_coder": Qwen3CoderParser,
}


def get_parser(name: str) -> ToolParser:
    """A parser instance for the format ``name``; ValueError naming the known formats."""
    parser_cls = PARSERS.get(name) if isinstance(name, str) else None
    if parser_cls is None:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {', '.join(sorted(PARSERS))}")
    return parser_cls()


def parse_tool_calls(
    text: str,
    parser: str = "hermes",
    tools: Tools | ToolIndex | None = None,
    *,
    think_open: bool | None = None,
) -> ParseResult:
    """Shorthand for ``get_parser(parser).parse(text, tools, think_open=think_open)``."""
    return get_parser(parser).parse(text, tools, think_open=think_open)


__all__ = [
    "PARSERS",
    "ParseResult",
    "ToolCall",
    "ToolCallError",
    "ToolIndex",
    "ToolParser",
    "get_parser",
    "new_call_id",
    "parse_tool_calls",
    "validate_tools",
]
