"""The admin routes' parameters: JSON bodies (strict, size-limited) and the values they or
a query string carry (booleans, versions, update modes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from rlserve._checks import is_int
from rlserve.pause_mode import PauseMode
from rlserve.server.errors import APIError, shown
from rlserve.server.http_utils import check_json_content_type, decode_json, read_body

_INT = re.compile(r"-?[0-9]{1,19}")
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The JSON object in the body ({} when empty): strict JSON, 413 past `limit` bytes."""
    check_json_content_type(request)
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def as_bool(value: Any, param: str) -> bool:
    """A JSON boolean, or its spelling in a query string ("true"/"false", "1"/"0")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    if is_int(value) and value in (0, 1):
        return bool(value)
    raise APIError(400, f"{param} must be true or false, got {shown(value)}", param)


def as_version(value: Any) -> int | None:
    """An integer policy version (a query string's digits too), or None when not given."""
    if value is None:
        return None
    if isinstance(value, str) and _INT.fullmatch(value):
        value = int(value)
    if not is_int(value):
        raise APIError(400, f"version must be an integer, got {shown(value)}", "version")
    return value


def as_mode(value: Any) -> PauseMode:
    """The PauseMode named by `value` ("keep" when not given); 400 otherwise."""
    if value is None or value == "":
        return PauseMode.KEEP
    modes = tuple(mode.value for mode in PauseMode)
    if not isinstance(value, str) or value not in modes:
        raise APIError(400, f"mode must be one of {modes}, got {shown(value)}", "mode")
    return PauseMode(value)


def update_options(source: Mapping[str, Any]) -> tuple[int | None, PauseMode, bool]:
    """(version, mode, recompute_kv) from a JSON body or the query string."""
    mode = as_mode(source.get("mode"))
    recompute = as_bool(source.get("recompute_kv", False), "recompute_kv")
    return as_version(source.get("version")), mode, recompute


def optional_str(value: Any, param: str) -> str | None:
    """A string, or None when not given; 400 otherwise."""
    if value is None or isinstance(value, str):
        return value
    raise APIError(400, f"{param} must be a string, got {shown(value)}", param)
