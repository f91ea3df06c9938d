"""Anthropic-style XML: ``<function_calls><invoke name="f"><parameter name="p">v</parameter>
</invoke></function_calls>``."""

from __future__ import annotations

import re

from rlserve.tools.parsers.base import ScanContext, TaggedBlockParser
from rlserve.tools.parsers.schema import ToolIndex, build_call, convert_value
from rlserve.tools.parsers.types import ToolCall, ToolCallError

OPEN = "<function_calls>"
CLOSE = "</function_calls>"
INVOKE_TAG = re.compile(r'<invoke\s+name\s*=\s*"([^"]*)"\s*>')
INVOKE_CLOSE = "</invoke>"
PARAM_TAG = re.compile(r'<parameter\s+name\s*=\s*"([^"]*)"\s*>')
PARAM_CLOSE = "</parameter>"


def strip_one_newline(value: str) -> str:
    """Drop the single newline models put after an opening and before a closing tag."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


class XmlParser(TaggedBlockParser):
    """Each ``<invoke>`` is one call; parameter values are converted by the tool schema's
    type when known, else JSON-decoded when they parse, else kept as strings."""

    name = "xml"
    open_tag, close_tag = OPEN, CLOSE
    call_opening = '<invoke name="{name}">\n'
    no_calls = "no <invoke> in <function_calls>"

    def block_items(
        self, ctx: ScanContext, start: int, inner_end: int, end: int
    ) -> list[ToolCall | ToolCallError]:
        return parse_invokes(ctx.text, start + len(OPEN), inner_end, ctx.tools)


def parse_invokes(
    text: str, pos: int, end: int, tools: ToolIndex
) -> list[ToolCall | ToolCallError]:
    """Every ``<invoke>`` element in ``text[pos:end]``; a broken one becomes an error."""
    items: list[ToolCall | ToolCallError] = []
    while (i := text.find("<invoke", pos, end)) != -1:
        close = text.find(INVOKE_CLOSE, i, end)
        following = text.find("<invoke", i + 1, end)
        if close == -1 or (following != -1 and following < close):
            stop = end if following == -1 else following
            items.append(ToolCallError("unclosed <invoke>", text[i:stop], i, stop))
            pos = stop
            continue
        stop = close + len(INVOKE_CLOSE)
        items.append(_invoke(text, i, close, stop, tools))
        pos = stop
    return items


def _invoke(
    text: str, start: int, close: int, end: int, tools: ToolIndex
) -> ToolCall | ToolCallError:
    raw = text[start:end]
    tag = INVOKE_TAG.match(text, start, close)
    if tag is None:
        return ToolCallError('invalid <invoke> tag (expected name="...")', raw, start, end)
    name = tag.group(1).strip()
    args: dict[str, object] = {}
    pos = tag.end()
    while (i := text.find("<parameter", pos, close)) != -1:
        param = PARAM_TAG.match(text, i, close)
        value_end = text.find(PARAM_CLOSE, param.end(), close) if param else -1
        if param is None or value_end == -1:
            return ToolCallError("malformed <parameter> element", raw, start, end, name)
        key = param.group(1).strip()
        value = strip_one_newline(text[param.end() : value_end])
        args[key] = convert_value(value, tools.param_type(name, key))
        pos = value_end + len(PARAM_CLOSE)
    return build_call(name, args, raw, start, end, tools)
