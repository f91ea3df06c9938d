"""Hermes / Qwen2.5 style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""

from __future__ import annotations

import json
from typing import Any

from rlserve.tools.parsers.base import Match, ScanContext, ToolParser, skip_space
from rlserve.tools.parsers.jsonscan import call_from_object, decode_exact, json_extent
from rlserve.tools.parsers.types import ToolCallError

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
JUNK = -1


class HermesParser(ToolParser):
    """JSON inside ``<tool_call>`` tags. The JSON is delimited by its own brackets, so a
    ``</tool_call>`` inside a string value does not end the call. ``arguments`` or
    ``parameters`` are accepted, as an object or a JSON string; a JSON list holds several
    calls. A missing closing tag at the very end of the output is tolerated."""

    name = "hermes"
    markers = (OPEN,)

    def call_prefix(self, name: str) -> str:
        return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": '

    def match(self, ctx: ScanContext, start: int) -> Match | None:
        text = ctx.text
        if not text.startswith(OPEN, start):
            return self.partial_marker(ctx, start)
        body = skip_space(text, start + len(OPEN))
        bracketed = body < len(text) and text[body] in "{["
        end = json_extent(text, body) if bracketed else None
        if bracketed and end is None and not ctx.final:
            return None
        if end is not None:
            region_end = self._region_end(ctx, end)
            if region_end is None:
                return None
            if region_end != JUNK:
                ok, value = decode_exact(text, body, end)
                if ok:
                    return self._calls(ctx, start, region_end, value)
        return self._malformed(ctx, start, body)

    @staticmethod
    def _region_end(ctx: ScanContext, json_end: int) -> int | None:
        """Where the region closes after the JSON value; None to wait; JUNK if other text
        follows the value."""
        after = skip_space(ctx.text, json_end)
        if ctx.text.startswith(CLOSE, after):
            return after + len(CLOSE)
        if not CLOSE.startswith(ctx.text[after:]):
            return JUNK
        return len(ctx.text) if ctx.final else None

    @staticmethod
    def _calls(ctx: ScanContext, start: int, end: int, value: Any) -> Match:
        raw = ctx.text[start:end]
        values = value if isinstance(value, list) and value else [value]
        return Match(end, tuple(call_from_object(v, raw, start, end, ctx.tools) for v in values))

    @staticmethod
    def _malformed(ctx: ScanContext, start: int, body: int) -> Match | None:
        close = ctx.text.find(CLOSE, body)
        if close == -1 and not ctx.final:
            return None
        end = len(ctx.text) if close == -1 else close + len(CLOSE)
        error = ToolCallError("tool call is not valid JSON", ctx.text[start:end], start, end)
        return Match(end, (error,))
