"""Qwen3-Coder XML: ``<tool_call><function=f><parameter=p>value</parameter></function>
</tool_call>``."""

from __future__ import annotations

import re

from rlserve.tools.parsers.base import ScanContext, TaggedBlockParser
from rlserve.tools.parsers.schema import ToolIndex, build_call, convert_value
from rlserve.tools.parsers.types import ToolCall, ToolCallError
from rlserve.tools.parsers.xml_format import strip_one_newline

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
FUNCTION_TAG = re.compile(r"<function=([^>\n]*)>")
FUNCTION_CLOSE = "</function>"
PARAM_TAG = re.compile(r"<parameter=([^>\n]*)>")
PARAM_CLOSE = "</parameter>"


class Qwen3CoderParser(TaggedBlockParser):
    """Values are raw text between the parameter tags (one surrounding newline dropped),
    converted by the tool schema's type when known, else JSON-decoded if possible, else
    strings. A missing ``</parameter>`` ends the value at the next parameter or
    ``</function>``."""

    name = "qwen3_coder"
    open_tag, close_tag = OPEN, CLOSE
    call_opening = "<function={name}>\n"
    no_calls = "no <function=...> in tool call"

    def block_items(
        self, ctx: ScanContext, start: int, inner_end: int, end: int
    ) -> list[ToolCall | ToolCallError]:
        region = (ctx.text[start:end], start, end)
        return parse_functions(ctx.text, start + len(OPEN), inner_end, ctx.tools, region)


def parse_functions(
    text: str, pos: int, end: int, tools: ToolIndex, region: tuple[str, int, int]
) -> list[ToolCall | ToolCallError]:
    """Each ``<function=...>`` block in ``text[pos:end]``; positions are the region's."""
    raw, start, stop = region
    items: list[ToolCall | ToolCallError] = []
    while (i := text.find("<function=", pos, end)) != -1:
        tag = FUNCTION_TAG.match(text, i, end)
        close = text.find(FUNCTION_CLOSE, i, end)
        if tag is None or close == -1:
            items.append(ToolCallError("malformed <function=...> block", raw, start, stop))
            break
        name = tag.group(1).strip()
        args = _parameters(text, tag.end(), close, name, tools)
        items.append(build_call(name, args, raw, start, stop, tools))
        pos = close + len(FUNCTION_CLOSE)
    return items


def _parameters(text: str, pos: int, end: int, tool: str, tools: ToolIndex) -> dict[str, object]:
    args: dict[str, object] = {}
    while (tag := PARAM_TAG.search(text, pos, end)) is not None:
        value_end = text.find(PARAM_CLOSE, tag.end(), end)
        following = PARAM_TAG.search(text, tag.end(), end)
        if value_end == -1 or (following is not None and following.start() < value_end):
            value_end = following.start() if following is not None else end
            pos = value_end
        else:
            pos = value_end + len(PARAM_CLOSE)
        key = tag.group(1).strip()
        value = strip_one_newline(text[tag.end() : value_end])
        args[key] = convert_value(value, tools.param_type(tool, key))
    return args
