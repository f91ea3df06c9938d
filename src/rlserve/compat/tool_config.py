"""tools.yaml (`rollout.multi_turn.tool_config_path`) to tool schemas and executors.

Each entry of `tools:` is either seed 003's shape, `{name, description, parameters}`
(plus `class_name` for its implementation; without one the name must be a built-in:
calculator, code_interpreter), or VERL's, `{class_name, config, tool_schema}` with
`tool_schema` an OpenAI tool definition. `class_name` is a dotted path to a function
(called with the call's arguments) or to a class with VERL's `BaseTool` methods
(`create`, `execute(instance_id, parameters)`, `release`; sync or async), built as
`cls(config=..., tool_schema=...)`; each call gets its own instance id. Every tool's
response is cut to `max_tool_response_length` characters, as VERL does.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlserve._checks import ParamError
from rlserve.compat.builtin_tools import BUILTINS
from rlserve.compat.config_file import read_yaml
from rlserve.tools import ToolExecutor, validate_tools

ENTRY_KEYS = ("name", "description", "parameters", "class_name", "config", "tool_schema")


@dataclass
class ToolSet:
    """The tools offered to the model (OpenAI definitions) and the executor of each."""

    schemas: list[dict[str, Any]] = field(default_factory=list)
    executors: dict[str, ToolExecutor] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()


class _Schema(dict):
    """A tool definition readable as VERL's pydantic schema (`schema.function.name`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _Schema(value) if isinstance(value, dict) else value

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return json.loads(json.dumps(self))


def load_tool_set(path: Path, max_response_chars: int, truncate_side: str) -> ToolSet:
    """The tools of the YAML file at `path`."""
    key = "rollout.multi_turn.tool_config_path"
    data = read_yaml(path, key)
    if not isinstance(data, Mapping) or not isinstance(data.get("tools"), list):
        raise ParamError(key, f"{key}: {str(path)!r} must hold a mapping with a 'tools' list")
    tools = ToolSet()
    try:
        for i, entry in enumerate(data["tools"]):
            schema, executor = _tool(entry, f"{path.name}: tools[{i}]", tools.closers)
            name = schema["function"]["name"]
            if name in tools.executors:
                raise ParamError(key, f"{path.name}: tools[{i}]: a second tool named {name!r}")
            tools.schemas.append(schema)
            tools.executors[name] = truncating(executor, max_response_chars, truncate_side)
    except BaseException:
        tools.close()
        raise
    return tools


def _tool(entry: Any, where: str, closers: list) -> tuple[dict[str, Any], ToolExecutor]:
    if not isinstance(entry, Mapping):
        raise ParamError(where, f"{where}: a tool must be a mapping, got {entry!r:.80}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ParamError(
            f"{where}.{unknown[0]}",
            f"{where}.{unknown[0]}: unknown key; the keys are {', '.join(ENTRY_KEYS)}",
        )
    schema = _schema(entry, where)
    name = schema["function"]["name"]
    if entry.get("class_name") is not None:
        return schema, _from_class_path(entry, schema, f"{where}.class_name")
    if name not in BUILTINS:
        raise ParamError(
            f"{where}.class_name",
            f"{where}: tool {name!r} has no implementation: give class_name (a function "
            f"or a VERL BaseTool class) or use a built-in ({', '.join(BUILTINS)})",
        )
    executor = BUILTINS[name][0]()
    if hasattr(executor, "close"):
        closers.append(executor.close)
    return schema, executor


def _schema(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    if entry.get("tool_schema") is not None:
        if any(k in entry for k in ("name", "description", "parameters")):
            raise ParamError(
                f"{where}.tool_schema", f"{where}: give tool_schema or name/parameters, not both"
            )
        schema = dict(entry["tool_schema"])
    else:
        name = entry.get("name")
        builtin = BUILTINS.get(name) if isinstance(name, str) else None
        default = builtin[1]["function"] if builtin else {}
        function = {
            "name": name,
            "description": entry.get("description", default.get("description", "")),
            "parameters": entry.get(
                "parameters", default.get("parameters", {"type": "object", "properties": {}})
            ),
        }
        schema = {"type": "function", "function": function}
    try:
        validate_tools([schema])
    except ValueError as exc:
        raise ParamError(where, f"{where}: {str(exc).removeprefix('tools[0]: ')}") from None
    return json.loads(json.dumps(schema))  # plain dicts and lists, whatever YAML gave


def _from_class_path(entry: Mapping[str, Any], schema: dict, where: str) -> ToolExecutor:
    path = entry["class_name"]
    if not isinstance(path, str) or "." not in path:
        raise ParamError(where, f"{where} must be a dotted path 'module.Name', got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ParamError(where, f"{where}: cannot import {path!r}: {exc}") from None
    if inspect.isclass(target):
        if not callable(getattr(target, "execute", None)):
            raise ParamError(where, f"{where}: class {path!r} has no execute method (BaseTool)")
        config = dict(entry.get("config") or {})
        return _verl_tool(target(config=config, tool_schema=_Schema(schema)), schema)
    if callable(target):
        return target
    raise ParamError(where, f"{where}: {path!r} is neither a function nor a class")


def _verl_tool(tool: Any, schema: dict[str, Any]) -> ToolExecutor:
    async def run(**arguments: Any) -> Any:
        created = await _value(tool.create())
        instance_id = created[0] if isinstance(created, tuple) else created
        try:
            result = await _value(tool.execute(instance_id, arguments))
        finally:
            await _value(tool.release(instance_id))
        response = result[0] if isinstance(result, tuple) else result
        if isinstance(response, Mapping) and "text" in response:
            return response["text"]
        return getattr(response, "text", response)

    run.__signature__ = _signature(schema)  # type: ignore[attr-defined]
    return run


def _signature(schema: dict[str, Any]) -> inspect.Signature:
    """Keyword parameters from the schema's properties (required ones without a default),
    so a call with unknown or missing arguments is the model's error."""
    params = schema["function"].get("parameters") or {}
    properties = params.get("properties") or {}
    if not properties or params.get("additionalProperties"):
        return inspect.Signature([inspect.Parameter("arguments", inspect.Parameter.VAR_KEYWORD)])
    required = set(params.get("required") or ())
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if name in required else None,
            )
            for name in properties
        ]
    )


async def _value(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def truncating(fn: ToolExecutor, limit: int, side: str) -> ToolExecutor:
    """`fn` with its response as text cut to `limit` characters on `side` (VERL's rule:
    "left" keeps the start, "right" the end, "middle" both halves); same signature."""

    @functools.wraps(fn)
    def run(**arguments: Any) -> str:
        value = fn(**arguments)
        if inspect.isawaitable(value):
            value = asyncio.run(_value(value))
        return truncate_response(value if isinstance(value, str) else _json(value), limit, side)

    return run


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def truncate_response(text: str, limit: int, side: str) -> str:
    if len(text) <= limit:
        return text
    if side == "left":
        return text[:limit] + "...(truncated)"
    if side == "right":
        return "(truncated)..." + text[-limit:]
    half = limit // 2
    return text[:half] + "...(truncated)..." + text[-half:]
