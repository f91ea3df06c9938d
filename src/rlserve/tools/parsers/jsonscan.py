"""Find and decode JSON values embedded in text, and read tool calls out of them."""

from __future__ import annotations

import json
import re
from typing import Any

from rlserve.tools.parsers.schema import ToolIndex, build_call
from rlserve.tools.parsers.types import ToolCall, ToolCallError

_DECODER = json.JSONDecoder(strict=False)  # models put raw newlines inside strings
_SPECIAL = re.compile(r'["\\{}\[\]]')
# Malformed JSON that starts like a call is reported as a broken call rather than kept as text.
CALL_LIKE_START = re.compile(r'[\[\s]*\{\s*"(?:name|function|type)"')


def json_extent(text: str, start: int) -> int | None:
    """End (exclusive) of the bracketed value opening at ``text[start]`` (``{`` or ``[``),
    honouring strings and escapes; None if it is not closed within ``text``."""
    depth = 0
    in_string = False
    skip_before = -1
    for m in _SPECIAL.finditer(text, start):
        i = m.start()
        if i < skip_before:
            continue
        ch = text[i]
        if in_string:
            if ch == "\\":
                skip_before = i + 2
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def decode_exact(text: str, start: int, end: int) -> tuple[bool, Any]:
    """(True, value) if ``text[start:end]`` is exactly one JSON value, else (False, None)."""
    try:
        value, stop = _DECODER.raw_decode(text, start)
    except ValueError:
        return False, None
    return stop == end, value


def looks_like_call(value: Any) -> bool:
    """A dict with a string ``name`` and ``arguments``/``parameters`` (or an OpenAI-style
    ``{"type": "function", "function": {...}}`` wrapper of one)."""
    if not isinstance(value, dict):
        return False
    if "name" not in value and isinstance(value.get("function"), dict):
        value = value["function"]
    return isinstance(value.get("name"), str) and ("arguments" in value or "parameters" in value)


def call_from_object(
    value: Any, raw: str, start: int, end: int, tools: ToolIndex
) -> ToolCall | ToolCallError:
    """Read ``{"name": ..., "arguments"|"parameters": ...}`` into a call (or an error)."""
    if not isinstance(value, dict):
        return ToolCallError("a tool call must be a JSON object", raw, start, end)
    if "name" not in value and isinstance(value.get("function"), dict):
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return ToolCallError("tool call without a name", raw, start, end)
    args = value.get("arguments", value.get("parameters"))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        ok, decoded = _decode_string_arguments(args)
        if not ok:
            return ToolCallError("arguments string is not valid JSON", raw, start, end, name)
        args = decoded
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ToolCallError("arguments must be a JSON object", raw, start, end, name)
    return build_call(name, args, raw, start, end, tools)


def _decode_string_arguments(text: str) -> tuple[bool, Any]:
    stripped = text.strip()
    if not stripped:
        return True, {}
    return decode_exact(stripped, 0, len(stripped))
