"""Bare JSON tool calls anywhere in the text: ``{"name": ..., "arguments": {...}}`` objects
(or seed 001's ``{"tool": ..., "arguments": {...}}``) or a JSON list of them."""

from __future__ import annotations

import json
import re
from typing import Any

from rlserve.tools.parsers.base import Match, ScanContext, ToolParser
from rlserve.tools.parsers.jsonscan import (
    CALL_LIKE_START,
    call_from_object,
    decode_exact,
    json_extent,
    looks_like_call,
)
from rlserve.tools.parsers.types import ToolCallError

_BRACKET = re.compile(r"[{\[]")
# Seed 001's shape names the tool under "tool"; broken JSON starting so is a broken call too.
_TOOL_KEY_START = re.compile(r'[\[\s]*\{\s*"tool"')


class JsonParser(ToolParser):
    """A JSON value is a call when it is an object with a string ``name`` and
    ``arguments``/``parameters`` (or a non-empty list of objects, at least one of them such a
    call). ``{"tool": ..., "arguments": ...}`` (seed 001's shape) is read as the same call.
    Other JSON stays in the content. Bracketed text that is not valid JSON but starts like a
    call (``{"name": ...`` or ``{"tool": ...``) is reported as a malformed call."""

    name = "json"

    def call_prefix(self, name: str) -> str:
        return f'{{"name": {json.dumps(name)}, "arguments": '

    def find_candidate(self, ctx: ScanContext, pos: int) -> int | None:
        found = _BRACKET.search(ctx.text, pos)
        return found.start() if found else None

    def match(self, ctx: ScanContext, start: int) -> Match | None:
        return match_json_value(ctx, start, strict=False, tool_key=True)


def match_json_value(
    ctx: ScanContext, start: int, *, strict: bool, tool_key: bool = False
) -> Match | None:
    """Match the JSON value at ``start``. ``strict``: it sits where only calls are expected,
    so anything that is not a call is an error rather than content. ``tool_key``: objects
    may name the tool under ``"tool"`` instead of ``"name"``."""
    text = ctx.text
    end = json_extent(text, start)
    if end is None:
        if not ctx.final:
            return None
        if strict:
            error = ToolCallError("unterminated tool call JSON", text[start:], start, len(text))
            return Match(len(text), (error,))
        return ctx.not_a_call(start)
    raw = text[start:end]
    ok, value = decode_exact(text, start, end)
    if not ok:
        if strict or CALL_LIKE_START.match(raw) or (tool_key and _TOOL_KEY_START.match(raw)):
            return Match(end, (ToolCallError("tool call is not valid JSON", raw, start, end),))
        return ctx.not_a_call(start)  # maybe prose with braces; a call may still be inside
    if tool_key:
        value = _renamed_tool_key(value)
    values = _call_values(value)
    if values is None:
        if strict:
            return Match(end, (ToolCallError("JSON is not a tool call", raw, start, end),))
        return ctx.not_a_call(start, end)
    return Match(end, tuple(_item(v, raw, start, end, ctx) for v in values))


def _renamed_tool_key(value: Any) -> Any:
    """``value`` with every ``{"tool": name, "arguments"|"parameters": ...}`` object (alone
    or in a list) rewritten as ``{"name": name, ...}``; anything else unchanged."""
    if isinstance(value, list):
        return [_renamed_tool_key(v) for v in value]
    if not isinstance(value, dict) or "name" in value or not isinstance(value.get("tool"), str):
        return value
    if "arguments" not in value and "parameters" not in value:
        return value
    renamed = {k: v for k, v in value.items() if k != "tool"}
    return {"name": value["tool"], **renamed}


def _call_values(value: Any) -> list[Any] | None:
    if looks_like_call(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if any(looks_like_call(v) for v in value):
            return value
    return None


def _item(value: Any, raw: str, start: int, end: int, ctx: ScanContext) -> Any:
    if looks_like_call(value):
        return call_from_object(value, raw, start, end, ctx.tools)
    return ToolCallError("list element is not a tool call", raw, start, end)
