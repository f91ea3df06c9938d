"""`POST /update_weights`: a safetensors file under `--weights-dir`, or streamed in the body.

The update is checked (file read, every name/shape/dtype, the version) before anything is
paused or aborted: a bad update is refused with 400 and no request loses its output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from rlserve.models.loader import WeightItems, check_weights, read_safetensors
from rlserve.pause_mode import PauseMode
from rlserve.server.admin_engine import engine_call, hide_server_paths
from rlserve.server.admin_files import path_under
from rlserve.server.admin_options import json_body, update_options
from rlserve.server.errors import APIError
from rlserve.server.safetensors_body import ReceiveBuffer, parse_safetensors, read_body
from rlserve.server.state import ServerState


def checked_weights(state: ServerState, items: WeightItems) -> WeightItems:
    """`items` checked against the served model's names, shapes and dtypes (400)."""
    try:  # names, shapes and dtypes only: safe off the engine thread (see check_weights)
        return check_weights(state.loop.engine.model, items)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


def read_checked_weights(state: ServerState, path: Path) -> WeightItems:
    """Worker thread: the safetensors at `path` read into memory and checked (400)."""
    try:
        items = read_safetensors(path)
    except ValueError as exc:
        raise APIError(400, hide_server_paths(str(exc), state, {})) from exc
    return checked_weights(state, items)


async def tensors_from_body(
    request: Request, limit: int, receive_buffer: ReceiveBuffer
) -> dict[str, Any]:
    """The safetensors state dict streamed in the body; 413 over `limit`, 400 if corrupt."""
    body = await read_body(
        request, limit, "--max-update-bytes", "the weight update body", receive_buffer
    )
    if not body.numel():
        raise APIError(400, "the request body is empty; send safetensors bytes")
    try:
        return parse_safetensors(body)
    except ValueError as exc:
        raise APIError(400, f"the body is not valid safetensors: {exc}") from exc


async def commit_update(
    state: ServerState,
    weights: WeightItems,
    version: int | None,
    mode: PauseMode,
    recompute: bool,
) -> int:
    """Install checked `weights` on the engine thread, pausing/aborting per `mode` once
    the version is known to be acceptable."""
    return await engine_call(
        state,
        lambda e: e.update_weights(weights, version, recompute_kv=recompute),
        mode,
        check=lambda e: e.check_version(version),
    )


async def update_weights(state: ServerState, request: Request) -> JSONResponse:
    """Read and check the update first, then pause/abort per `mode`, then commit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        version, mode, recompute = update_options(request.query_params)
        async with state.receive_buffer.lock:  # the tensors are views of the shared buffer
            tensors = await tensors_from_body(
                request, state.config.max_update_bytes, state.receive_buffer
            )
            weights = checked_weights(state, list(tensors.items()))
            new = await commit_update(state, weights, version, mode, recompute)
    else:
        body = await json_body(request, state.config.max_request_bytes)
        version, mode, recompute = update_options(body)
        path = path_under(state.config.weights_dir, body.get("path"), "path")
        weights = await asyncio.to_thread(read_checked_weights, state, path)
        new = await commit_update(state, weights, version, mode, recompute)
    return JSONResponse({"policy_version": new, "mode": mode})
