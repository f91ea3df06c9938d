"""The offered tools: name checks and schema-driven conversion of string arguments."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rlserve.tools.parsers.types import ToolCall, ToolCallError


class ToolIndex:
    """Offered tools by name. ``None`` means "not given": every name is accepted."""

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.given = tools is not None
        self.parameters: dict[str, dict[str, Any]] = {}
        if tools is None:
            return
        if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
            raise ValueError("tools must be a list of tool definitions")
        for tool in tools:
            name, params = _unpack_tool(tool)
            self.parameters[name] = params

    def unknown(self, name: str) -> str | None:
        """An error message if ``name`` is not an offered tool, else None."""
        if not self.given or name in self.parameters:
            return None
        offered = ", ".join(sorted(self.parameters)) or "none"
        return f"unknown tool {name!r} (offered: {offered})"

    def param_type(self, tool: str, param: str) -> str | None:
        """The JSON-schema type of ``param`` of ``tool`` when the schema declares one."""
        props = self.parameters.get(tool, {}).get("properties")
        spec = props.get(param) if isinstance(props, Mapping) else None
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if isinstance(kind, list):  # e.g. ["string", "null"]
            kind = next((k for k in kind if k != "null"), None)
        return kind if isinstance(kind, str) else None


def _unpack_tool(tool: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(tool, Mapping):
        raise ValueError(f"each tool must be a dict, got {type(tool).__name__}")
    fn = tool.get("function", tool) if tool.get("type", "function") == "function" else tool
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool definition without a name: {tool!r}")
    params = fn.get("parameters") or {}
    return name, dict(params) if isinstance(params, Mapping) else {}


def build_call(
    name: str, arguments: dict[str, Any], raw: str, start: int, end: int, tools: ToolIndex
) -> ToolCall | ToolCallError:
    """A ToolCall, or a ToolCallError when the name is not among the offered tools."""
    problem = tools.unknown(name)
    if problem is not None:
        return ToolCallError(problem, raw, start, end, name=name)
    return ToolCall(name, arguments, raw, start, end)


def convert_value(raw: str, kind: str | None) -> Any:
    """Turn a textual argument into a value: by the schema type when known, else decode it
    as JSON if it parses, else keep the string."""
    text = raw.strip()
    if kind == "string":
        return raw
    if kind == "integer":
        return _first_ok(raw, lambda: int(text), lambda: _integral_float(text))
    if kind == "number":
        return _first_ok(raw, lambda: int(text), lambda: float(text))
    if kind == "boolean":
        lowered = text.lower()
        return {"true": True, "false": False}.get(lowered, raw)
    if kind == "null":
        return None if text.lower() in ("null", "none", "") else raw
    if kind in ("object", "array"):
        return _first_ok(raw, lambda: json.loads(text), lambda: jsonable(ast.literal_eval(text)))
    return _first_ok(raw, lambda: json.loads(text))


def jsonable(value: Any) -> Any:
    """``value`` with tuples turned into lists; TypeError if it has no JSON form."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("object keys must be strings")
        return {k: jsonable(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _integral_float(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _first_ok(default: Any, *attempts: Any) -> Any:
    for attempt in attempts:
        try:
            return attempt()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return default
