"""Llama 3.x JSON tool calls: optional ``<|python_tag|>``, then one or more
``{"name": ..., "parameters": {...}}`` objects separated by ``;`` or newlines."""

from __future__ import annotations

import json
import re

from rlserve.tools.parsers.base import Match, ScanContext, ToolParser, skip_space
from rlserve.tools.parsers.json_format import match_json_value

PYTHON_TAG = "<|python_tag|>"
_BRACE_OR_SEMICOLON = re.compile(r"[{;]")


class Llama3JsonParser(ToolParser):
    """A call object must start a line or follow ``<|python_tag|>`` or a ``;`` separator
    (tag and separator are dropped from the content along with the call). After the tag,
    JSON that is not a call is an error; elsewhere non-call JSON stays in the content."""

    name = "llama3_json"
    markers = (PYTHON_TAG,)

    def call_prefix(self, name: str) -> str:
        return f'{{"name": {json.dumps(name)}, "parameters": '

    def find_candidate(self, ctx: ScanContext, pos: int) -> int | None:
        tagged = super().find_candidate(ctx, pos)
        limit = len(ctx.text) if tagged is None else tagged
        for found in _BRACE_OR_SEMICOLON.finditer(ctx.text, pos, limit):
            i = found.start()
            if ctx.text[i] == ";" or _object_position(ctx, i) is not None:
                return i
        return tagged

    def match(self, ctx: ScanContext, start: int) -> Match | None:
        text = ctx.text
        if text.startswith(PYTHON_TAG, start):
            return Match(start + len(PYTHON_TAG))  # markup only: removed from the content
        if text[start] == ";":
            return _separated_call(ctx, start)
        if text[start] != "{":
            return self.partial_marker(ctx, start)
        return match_json_value(ctx, start, strict=_object_position(ctx, start) == "tag")


def _separated_call(ctx: ScanContext, start: int) -> Match | None:
    """``; {...}``: the separator goes with the call when a call follows it."""
    brace = skip_space(ctx.text, start + 1, " \t")
    if brace == len(ctx.text):
        return None if not ctx.final else ctx.not_a_call(start)
    if ctx.text[brace] != "{":
        return ctx.not_a_call(start)
    found = match_json_value(ctx, brace, strict=False)
    if found is None:
        return None
    return ctx.not_a_call(start) if found.content else Match(found.end, found.items)


def _object_position(ctx: ScanContext, i: int) -> str | None:
    """How the ``{`` at ``i`` is placed: "tag" (after the python tag), "line" (line start),
    or None (inside other text, so not a call)."""
    j = i
    while j > ctx.origin and ctx.text[j - 1] in " \t":
        j -= 1
    if ctx.text.endswith(PYTHON_TAG, ctx.origin, j):
        return "tag"
    return "line" if ctx.at_line_start(j) else None
