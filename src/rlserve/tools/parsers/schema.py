"""The offered tools: name checks and schema-driven conversion of string arguments."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rlserve.tools.parsers.types import ToolCall, ToolCallError

Tools = Sequence[Mapping[str, Any]]


class ToolIndex:
    """Offered tools by name. ``None`` means "not given": every name is accepted.

    ValueError (see :func:`validate_tools`) when a definition is unusable. Parsers take a
    built index in place of the tool list, so parsing many replies reads the tools once."""

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.given = tools is not None
        self.parameters: dict[str, dict[str, Any]] = {}
        if tools is None:
            return
        if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
            raise ValueError(f"tools must be a list of tool definitions, got {_kind(tools)}")
        for position, tool in enumerate(tools):
            name, params = _unpack_tool(tool, position)
            self.parameters[name] = params

    @classmethod
    def of(cls, tools: Tools | ToolIndex | None) -> ToolIndex:
        """``tools`` itself when it is an index already, else a new index of it."""
        return tools if isinstance(tools, ToolIndex) else cls(tools)

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


def validate_tools(tools: Any) -> None:
    """Check OpenAI-style tool definitions before any work is done with them.

    ``tools`` is None or a list of ``{"type": "function", "function": {"name": ...,
    "parameters": {...}}}`` (the bare function object is accepted too). ValueError naming
    the bad entry (``tools[1]: ...``) when one is not an object, has a ``type`` other
    than ``"function"``, has no non-empty string ``name``, or has ``parameters`` that are
    not an object.
    """
    ToolIndex(tools)


def _kind(value: Any) -> str:
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def _unpack_tool(tool: Any, position: int) -> tuple[str, dict[str, Any]]:
    where = f"tools[{position}]"
    if not isinstance(tool, Mapping):
        raise ValueError(f"{where}: a tool definition must be an object, got {_kind(tool)}")
    kind = tool.get("type", "function")
    if kind != "function":
        raise ValueError(f"{where}: type must be 'function', got {kind!r}"[:200])
    fn = tool.get("function", tool)
    if not isinstance(fn, Mapping):
        raise ValueError(f"{where}: function must be an object, got {_kind(fn)}")
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        shown = "missing" if name is None else repr(name)[:80]
        raise ValueError(
            f"{where}: a function without a name (its 'name' must be a non-empty string, got "
            f"{shown})"
        )
    params = fn.get("parameters")
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(
            f"{where}: function parameters must be a JSON-schema object, got {_kind(params)}"
        )
    return name, dict(params or {})


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
