"""Anthropic-style XML: ``<function_calls><invoke name="f"><parameter name="p">v</parameter>
</invoke></function_calls>``, and the older form seed 001 documents: ``<invoke><tool_name>f
</tool_name><parameters><p>v</p></parameters></invoke>``."""

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
BARE_INVOKE_TAG = re.compile(r"<invoke\s*>")
TOOL_NAME = re.compile(r"\s*<tool_name>(.*?)</tool_name>", re.DOTALL)
PARAMETERS_OPEN = re.compile(r"\s*<parameters>")
PARAMETERS_CLOSE = "</parameters>"
CHILD_TAG = re.compile(r"\s*<([A-Za-z_][\w.-]*)>")


def strip_one_newline(value: str) -> str:
    """Drop the single newline models put after an opening and before a closing tag."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


class XmlParser(TaggedBlockParser):
    """Each ``<invoke>`` is one call, in either form (``name="..."`` with ``<parameter>``
    elements, or ``<tool_name>`` with one element per argument inside ``<parameters>``);
    values are converted by the tool schema's type when known, else JSON-decoded when they
    parse, else kept as strings."""

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
        bare = BARE_INVOKE_TAG.match(text, start, close)
        if bare is not None:
            return _tool_name_invoke(text, bare.end(), close, (raw, start, end), tools)
        return ToolCallError(
            'invalid <invoke> tag (expected name="..." or <tool_name>)', raw, start, end
        )
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


def _tool_name_invoke(
    text: str, pos: int, close: int, where: tuple[str, int, int], tools: ToolIndex
) -> ToolCall | ToolCallError:
    """``<tool_name>f</tool_name><parameters><p>v</p>...</parameters>`` in
    ``text[pos:close]``; ``where`` is the whole invoke's (raw text, start, end)."""
    name_tag = TOOL_NAME.match(text, pos, close)
    if name_tag is None or not name_tag.group(1).strip():
        return ToolCallError("<invoke> without a <tool_name>", *where)
    name = name_tag.group(1).strip()
    params = PARAMETERS_OPEN.match(text, name_tag.end(), close)
    if params is None:
        return build_call(name, {}, *where, tools)
    params_end = text.find(PARAMETERS_CLOSE, params.end(), close)
    if params_end == -1:
        return ToolCallError("unclosed <parameters>", *where, name)
    args: dict[str, object] = {}
    pos = params.end()
    while (child := CHILD_TAG.match(text, pos, params_end)) is not None:
        key = child.group(1)
        value_end = text.find(f"</{key}>", child.end(), params_end)
        if value_end == -1:
            return ToolCallError(f"unclosed <{key}> in <parameters>", *where, name)
        value = strip_one_newline(text[child.end() : value_end])
        args[key] = convert_value(value, tools.param_type(name, key))
        pos = value_end + len(key) + 3
    if text[pos:params_end].strip():
        return ToolCallError("malformed <parameters> element", *where, name)
    return build_call(name, args, *where, tools)
