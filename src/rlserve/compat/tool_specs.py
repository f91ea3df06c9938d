"""Seed 001's tool definitions and its prompt augmentation, over rlserve's tool layer.

The seed writes tools as ``{"name", "description", "parameters": {"query": "string"}}``
(parameter name -> type name); chat templates and rlserve's parsers read OpenAI-style
``{"type": "function", "function": {..., "parameters": <JSON schema>}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rlserve.tools import validate_tools

_TYPE_NAMES = ("string", "integer", "number", "boolean", "object", "array", "null")
_CALL_EXAMPLES = {
    "json": '{"tool": "NAME", "arguments": {"ARG": "VALUE"}}',
    "xml": (
        "<function_calls>\n<invoke>\n<tool_name>NAME</tool_name>\n<parameters>\n"
        "<ARG>VALUE</ARG>\n</parameters>\n</invoke>\n</function_calls>"
    ),
    "function": 'NAME(ARG="VALUE")',
    "pythonic": '[NAME(ARG="VALUE")]',
    "hermes": '<tool_call>\n{"name": "NAME", "arguments": {"ARG": "VALUE"}}\n</tool_call>',
}


def openai_tools(tools: Any) -> list[dict[str, Any]]:
    """`tools` as OpenAI function tools; ValueError naming `available_tools[i]` when one
    is unusable. OpenAI-style entries are kept as they are."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("available_tools must be a non-empty list of tool definitions")
    converted = [_openai_tool(tool) for tool in tools]
    try:
        validate_tools(converted)
    except ValueError as exc:
        raise ValueError(f"available_{exc}") from None  # "tools[1]: ..." -> "available_tools[1]"
    return converted


def _openai_tool(tool: Any) -> Any:
    if not isinstance(tool, Mapping) or "function" in tool or "type" in tool:
        return tool  # OpenAI style already, or not a definition (validate_tools says so)
    function = dict(tool)
    params = function.get("parameters")
    if isinstance(params, Mapping) and params and _is_shorthand(params):
        function["parameters"] = {
            "type": "object",
            "properties": {name: {"type": kind} for name, kind in params.items()},
        }
    return {"type": "function", "function": function}


def _is_shorthand(params: Mapping[str, Any]) -> bool:
    """`{"query": "string", ...}`: every value a JSON-schema type name (not a schema)."""
    return "properties" not in params and all(v in _TYPE_NAMES for v in params.values())


def augmented_prompt(prompt: str, tools: list[dict[str, Any]], parser: str) -> str:
    """`prompt` followed by the tools and how to call one in the `parser` format: for a
    tokenizer without a chat template (which would render the tools itself)."""
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    example = _CALL_EXAMPLES.get(parser, _CALL_EXAMPLES["json"])
    return f"{prompt}\n\nAvailable tools:\n{listing}\n\nTo call a tool, write:\n{example}\n"
