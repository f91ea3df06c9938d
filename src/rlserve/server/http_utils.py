"""Request parsing, disconnect handling and SSE framing shared by the routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from rlserve.server.errors import APIError, ClientGone, validation_message, value_error_param
from rlserve.server.request_group import RequestGroup

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


async def parse_body(request: Request, model: type[M]) -> M:
    """Decode and validate a JSON body; 400 names the offending fields."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(400, message, param) from exc


async def wait_accepted(group: RequestGroup, fields: set[str]) -> None:
    """Wait until the engine took the prompts; its ValueError becomes a 400."""
    try:
        await group.accepted()
    except ValueError as exc:
        raise APIError(400, str(exc), value_error_param(str(exc), fields)) from exc
    except asyncio.CancelledError:
        group.abort()
        raise


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, group: RequestGroup, work: Awaitable[T]) -> T:
    """Await `work`; if the client goes away first, abort `group` (freeing its KV blocks)
    and raise ClientGone."""
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
            group.abort()


def sse(payload: Any) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False, allow_nan=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
