"""Request parsing and disconnect handling shared by the routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from rlserve.server.body_limits import read_limited
from rlserve.server.errors import (
    APIError,
    ClientGone,
    shown,
    validation_message,
    value_error_param,
)
from rlserve.server.request_group import RequestGroup

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The request body, refused (413) past `max_bytes` (`--max-request-bytes`) before
    anything more is read."""
    return await read_limited(request, max_bytes, "--max-request-bytes")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity literals, no lone surrogates; 400 on anything else."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError as exc:
        raise APIError(400, "malformed JSON body: nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise APIError(400, f"malformed JSON body: {exc}") from exc
    if b"\\u" in raw and _has_lone_surrogate(data):
        raise APIError(400, "malformed JSON body: a string holds a lone UTF-16 surrogate")
    return data


def _has_lone_surrogate(data: Any) -> bool:
    """Whether any string (or key) in `data` cannot be encoded as UTF-8 (iterative: the
    nesting depth json.loads accepted may be past the recursion limit)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_json_content_type(request: Request) -> None:
    """400 unless the body is declared JSON (`application/json` or `application/*+json`)
    or not declared at all: FastAPI's rule, so vLLM's, which answers a form-encoded or
    text body with a 400."""
    declared = request.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if not media_type or media_type == "application/json":
        return
    if media_type.startswith("application/") and media_type.endswith("+json"):
        return
    raise APIError(
        400,
        f"the request body must be JSON (Content-Type: application/json), not {shown(media_type)}",
    )


async def parse_body(request: Request, model: type[M], max_bytes: int) -> M:
    """Decode and validate a JSON body (at most `max_bytes`); 400 for a body declared as
    anything but JSON or one that does not validate (naming the offending fields), 413
    for a body over the limit. Large bodies are parsed in a worker thread."""
    check_json_content_type(request)
    raw = await read_body(request, max_bytes)
    if len(raw) > _PARSE_INLINE_BYTES:
        return await asyncio.to_thread(_validated, raw, model)
    return _validated(raw, model)


_PARSE_INLINE_BYTES = 256 * 1024  # parsing more would hold the event loop for milliseconds


def _validated(raw: bytes, model: type[M]) -> M:
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(400, message, param) from exc
    except RecursionError as exc:
        raise APIError(400, "the request body is nested too deeply") from exc


async def wait_accepted(group: RequestGroup, fields: AbstractSet[str]) -> None:
    """Wait until the engine took the prompts; its ValueError becomes a 400."""
    try:
        await group.accepted()
    except ValueError as exc:
        raise APIError(400, str(exc), value_error_param(exc, fields)) from exc
    except asyncio.CancelledError:
        group.abort()
        raise


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_client_left(
    request: Request, work: Awaitable[T], on_gone: Callable[[], None] = lambda: None
) -> T:
    """Await `work`; if the client goes away first, cancel it, call `on_gone` and raise
    ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            on_gone()


async def unless_disconnected(request: Request, group: RequestGroup, work: Awaitable[T]) -> T:
    """Await `work`; if the client goes away first, abort `group` (freeing its KV blocks)
    and raise ClientGone."""
    return await unless_client_left(request, work, group.abort)
