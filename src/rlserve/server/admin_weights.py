"""`POST /update_weights`: a safetensors file under `--weights-dir`, or streamed in the body.

The update is checked (file read, every name/shape/dtype, the version) before anything is
paused or aborted: a bad update is refused with 400 and no request loses its output. A
checkpoint in another floating dtype than the model's (a bf16 trainer, an fp32 server) is
cast while it is checked, as vLLM and SGLang do; the reply's `dtype_cast` says so. The path
may be given as `path`, `weight_path` (NexRL) or `model_path` (SGLang): one meaning.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import Request
from fastapi.responses import JSONResponse

from rlserve.models.loader import (
    DtypeCasts,
    WeightItems,
    cast_floating,
    check_weights,
    read_safetensors,
)
from rlserve.pause_mode import PauseMode
from rlserve.server.admin_engine import engine_call, hide_server_paths
from rlserve.server.admin_files import path_under
from rlserve.server.admin_options import json_body, optional_str, update_options
from rlserve.server.errors import APIError
from rlserve.server.safetensors_body import ReceiveBuffer, parse_safetensors, read_body
from rlserve.server.state import ServerState

PATH_FIELDS = ("path", "weight_path", "model_path")  # rlserve, NexRL, SGLang spellings


@dataclass(frozen=True)
class CheckedUpdate:
    """Weights ready to install, and the dtype casts made to get them there."""

    weights: WeightItems
    casts: DtypeCasts

    def cast_report(self) -> dict[str, list[str]] | None:
        """`{"from": [...], "to": [...]}` dtype names, or None when nothing was cast."""
        if not self.casts:
            return None
        return {
            "from": sorted({dtype_name(src) for src, _ in self.casts}),
            "to": sorted({dtype_name(dst) for _, dst in self.casts}),
        }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def checked_weights(state: ServerState, items: list[tuple[str, Any]]) -> CheckedUpdate:
    """`items` cast to the model's floating dtypes and checked against its names, shapes
    and dtypes (400). Reads only those, fixed while a model serves: safe off the engine
    thread (see check_weights)."""
    model = state.loop.engine.model
    cast_items, casts = cast_floating(model, items)
    try:
        return CheckedUpdate(check_weights(model, cast_items), casts)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


def read_checked_weights(state: ServerState, path: Path) -> CheckedUpdate:
    """Worker thread: the safetensors at `path` read into memory, cast and checked (400)."""
    try:
        items = read_safetensors(path)
    except ValueError as exc:
        raise APIError(400, hide_server_paths(str(exc), state, {})) from exc
    return checked_weights(state, items)


def given_path(body: dict[str, Any]) -> tuple[str, Any]:
    """(field, value) of the path the body names under one of PATH_FIELDS; 400 when none
    is given or two disagree."""
    given = [(field, body[field]) for field in PATH_FIELDS if body.get(field) is not None]
    if not given:
        names = " / ".join(PATH_FIELDS)
        raise APIError(400, f"the update needs a checkpoint path ({names})", "path")
    field, value = given[0]
    for other, other_value in given[1:]:
        if other_value != value:
            raise APIError(400, f"{field} and {other} name different paths", other)
    return field, value


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


async def update_from_disk(
    state: ServerState,
    field: str,
    value: Any,
    options: tuple[int | None, PauseMode, bool],
) -> tuple[int, CheckedUpdate]:
    """Read and check the checkpoint at `value` (under --weights-dir), then commit it with
    `options` (version, mode, recompute_kv); the new policy version and the update."""
    version, mode, recompute = options
    path = path_under(state.config.weights_dir, value, field)
    update = await asyncio.to_thread(read_checked_weights, state, path)
    return await commit_update(state, update.weights, version, mode, recompute), update


async def update_weights(state: ServerState, request: Request) -> JSONResponse:
    """Read and check the update first, then pause/abort per `mode`, then commit. A JSON
    body with `update_info` is one chunk of vLLM's lifecycle (`vllm_weight_transfer`)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        version, mode, recompute = update_options(request.query_params)
        async with state.receive_buffer.lock:  # the tensors are views of the shared buffer
            tensors = await tensors_from_body(
                request, state.config.max_update_bytes, state.receive_buffer
            )
            update = await asyncio.to_thread(checked_weights, state, list(tensors.items()))
            new = await commit_update(state, update.weights, version, mode, recompute)
    else:
        body = await json_body(request, state.config.max_request_bytes)
        if "update_info" in body:  # vLLM's lifecycle; imported here: it builds on this module
            from rlserve.server.vllm_weight_transfer import vllm_update_weights

            return await vllm_update_weights(state, request, body)
        options = update_options(body)
        for field in ("model_name", "weight_type"):  # NexRL sends them; nothing depends on them
            optional_str(body.get(field), field)
        field, value = given_path(body)
        new, update = await update_from_disk(state, field, value, options)
        mode = options[1]
    return JSONResponse({"policy_version": new, "mode": mode, "dtype_cast": update.cast_report()})
