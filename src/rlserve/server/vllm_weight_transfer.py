"""vLLM's weight-update lifecycle over HTTP (`vllm/entrypoints/serve/dev/rlhf/api_router.py`),
with a host data plane: the tensors come from safetensors files under `--weights-dir`.

A trainer calls `POST /init_weight_transfer_engine {"init_info": {...}}` once, then per
sync `POST /start_weight_update`, one or more `POST /update_weights {"update_info":
{"path": ...}}` (chunks) and `POST /finish_weight_update {"weight_version": ...}`.
vLLM's NCCL, CUDA-IPC and sparse-NCCL data planes cannot exist here: their init/update
bodies are 400s saying what to send instead. The rules where vLLM leaves them open:

- `update_info` is vLLM's shared-disk dialect: `path` (or `weight_path` / `model_path`),
  a safetensors file or folder under `--weights-dir`, or a list of them. Each chunk is
  read, cast to the model's dtypes and checked, then *staged*: nothing is installed yet.
  A name sent in two chunks: the later one wins (a trainer may retry a chunk).
- A refused chunk (bad body, unknown name, wrong shape) aborts the session, as vLLM's
  disk engine does: nothing is installed, `/finish_weight_update` is then a 409 and the
  trainer starts again. The weights never change on a refusal.
- `/finish_weight_update` installs everything staged in one commit (rlserve's "keep":
  between two steps, or at once when an operator paused), so `policy_version` advances
  once, then sets the optional `weight_version` label. Nothing staged: no commit and no
  version bump, the label is still set (vLLM finishes fine). A failed commit leaves the
  weights unchanged; the session is closed either way.
Replies are vLLM's `{"message": ...}` plus rlserve's fields; refusals are rlserve's error
JSON. The session lives on the app (`app.state`), one per server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlserve.models.loader import DtypeCasts
from rlserve.pause_mode import PauseMode
from rlserve.server.admin_files import path_under
from rlserve.server.admin_options import as_bool, json_body
from rlserve.server.admin_weights import (
    PATH_FIELDS,
    CheckedUpdate,
    commit_update,
    given_path,
    read_checked_weights,
)
from rlserve.server.auth import admin_access
from rlserve.server.errors import APIError, shown
from rlserve.server.sglang_routes import label
from rlserve.server.state import ServerState

HOST_BACKEND = "disk"  # vLLM's shared-disk backend name; the only data plane here
NCCL_INIT_KEYS = ("master_address", "master_port", "rank_offset", "world_size")
TRANSPORT_KEYS = ("names", "dtype_names", "shapes", "packed", "ipc_handles")
MAX_CHUNK_FILES = 256
NO_DEVICE_PLANE = (
    "rlserve has no NCCL / CUDA-IPC data plane; send checkpoint files instead: "
    '{"update_info": {"path": "<safetensors file or folder under --weights-dir>"}}, '
    "or stream safetensors bytes to rlserve's own POST /update_weights"
)


def cast_report(casts: DtypeCasts) -> dict[str, list[str]] | None:
    """The dtype casts made, as `CheckedUpdate.cast_report` words them."""
    return CheckedUpdate([], casts).cast_report()


@dataclass
class StagedUpdate:
    """One session's checked tensors, by name (a later chunk's tensor wins)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    casts: DtypeCasts = field(default_factory=set)
    chunks: int = 0

    def add(self, update: CheckedUpdate) -> None:
        self.tensors.update(update.weights)
        self.casts |= update.casts
        self.chunks += 1


@dataclass
class WeightTransfer:
    """The lifecycle's state: the open session, if any (the one backend needs no init
    state). `lock` orders chunks and the commit (a finish waits for a chunk being read)."""

    session: StagedUpdate | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def transfer_of(request: Request) -> WeightTransfer:
    """The app's WeightTransfer (made on first use)."""
    app_state = request.app.state
    if getattr(app_state, "vllm_weight_transfer", None) is None:
        app_state.vllm_weight_transfer = WeightTransfer()
    return app_state.vllm_weight_transfer


def only_keys(body: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """400 naming the first key of `body` not in `allowed`."""
    for key in body:
        if key not in allowed:
            raise APIError(400, f"{where} has no field {shown(key)}; known: {allowed}", key)


def init_backend(body: dict[str, Any]) -> str:
    """The backend an init body asks for ("disk" when it names none); 400 for NCCL/IPC."""
    init_info = body.get("init_info")
    if init_info is None:
        raise APIError(400, "Missing 'init_info' in request body", "init_info")
    if not isinstance(init_info, dict):
        raise APIError(400, "'init_info' must be a JSON object", "init_info")
    rendezvous = [key for key in NCCL_INIT_KEYS if key in init_info]
    if rendezvous:
        raise APIError(400, f"init_info {rendezvous} set up NCCL: {NO_DEVICE_PLANE}", "init_info")
    backend = init_info.get("backend", HOST_BACKEND)
    if backend != HOST_BACKEND:
        message = f"backend {shown(backend)} is not available ({HOST_BACKEND!r} is)"
        raise APIError(400, f"{message}: {NO_DEVICE_PLANE}", "backend")
    only_keys(init_info, ("backend",), "init_info")
    return HOST_BACKEND


def chunk_paths(update_info: Any) -> list[tuple[str, Any]]:
    """(field, path) of each file a chunk names; 400 for NCCL/IPC-shaped `update_info`."""
    if not isinstance(update_info, dict):
        raise APIError(400, "'update_info' must be a JSON object", "update_info")
    if any(key.startswith(TRANSPORT_KEYS) for key in update_info):
        raise APIError(400, f"tensor metadata without files: {NO_DEVICE_PLANE}", "update_info")
    only_keys(update_info, (*PATH_FIELDS, "is_checkpoint_format"), "update_info")
    # rlserve's parameters are the checkpoint's names: either format is the same tensors
    as_bool(update_info.get("is_checkpoint_format", True), "is_checkpoint_format")
    name, value = given_path(update_info)
    values = value if isinstance(value, list) else [value]
    if not 0 < len(values) <= MAX_CHUNK_FILES:
        raise APIError(400, f"{name} must name 1 to {MAX_CHUNK_FILES} files", name)
    return [(name, path) for path in values]


async def read_chunk(state: ServerState, update_info: Any) -> list[CheckedUpdate]:
    """Each file of the chunk read, cast and checked off the event loop (400)."""
    updates = []
    for name, given in chunk_paths(update_info):
        path = path_under(state.config.weights_dir, given, name)
        updates.append(await asyncio.to_thread(read_checked_weights, state, path))
    return updates


async def stage_chunk(
    state: ServerState, transfer: WeightTransfer, body: dict[str, Any]
) -> JSONResponse:
    """vLLM's `/update_weights` (the dispatch in `admin_weights` sends it here)."""
    update_info = body.get("update_info")
    if update_info is None:
        raise APIError(400, "Missing 'update_info' in request body", "update_info")
    async with transfer.lock:
        session = transfer.session
        if session is None:
            raise APIError(409, "update_weights needs a weight update: call start_weight_update")
        try:
            only_keys(body, ("update_info",), "the body")
            for update in await read_chunk(state, update_info):
                session.add(update)
        except APIError as exc:
            transfer.session = None
            exc.message += " (the weight update was aborted; nothing was installed)"
            raise
    return JSONResponse(
        {
            "message": "Weights updated",
            "staged": len(session.tensors),
            "dtype_cast": cast_report(session.casts),
        }
    )


async def vllm_update_weights(state: ServerState, request: Request, body: dict) -> JSONResponse:
    """`POST /update_weights` with vLLM's `update_info`: stage one chunk of the session."""
    return await stage_chunk(state, transfer_of(request), body)


async def finish(
    state: ServerState, transfer: WeightTransfer, weight_version: str | None
) -> dict[str, Any]:
    """Commit the staged tensors once (none: no commit), then set the label."""
    async with transfer.lock:
        session = transfer.session
        if session is None:
            raise APIError(409, "finish_weight_update needs a start_weight_update first")
        transfer.session = None  # closed whatever the commit does
        version = state.policy_version
        if session.tensors:
            weights = list(session.tensors.items())
            version = await commit_update(state, weights, None, PauseMode.KEEP, False)
    if weight_version is not None:
        state.set_weight_version(weight_version, version)
    return {
        "message": "Weight update finished",
        "policy_version": version,
        "weight_version": state.weight_version,
        "updated": len(session.tensors),
        "dtype_cast": cast_report(session.casts),
    }


async def start(transfer: WeightTransfer, body: dict[str, Any]) -> None:
    only_keys(body, ("is_checkpoint_format",), "the body")
    as_bool(body.get("is_checkpoint_format", True), "is_checkpoint_format")
    async with transfer.lock:
        if transfer.session is not None:
            raise APIError(
                409,
                "start_weight_update called while a weight update is already in progress. "
                "Call finish_weight_update first.",
            )
        transfer.session = StagedUpdate()


def vllm_weight_transfer_router(state: ServerState) -> APIRouter:
    """The lifecycle's routes but `/update_weights` (rlserve's, which dispatches on
    `update_info`), under the admin key."""
    access = admin_access(state.config)
    router = APIRouter(dependencies=[Depends(access)] if access.checks else [])
    limit = state.config.max_request_bytes

    @router.post("/init_weight_transfer_engine")
    async def init_weight_transfer_engine(request: Request) -> JSONResponse:
        init_backend(await json_body(request, limit))  # "disk" needs no rendezvous
        return JSONResponse({"message": "Weight transfer initialized"})

    @router.post("/start_weight_update")
    async def start_weight_update(request: Request) -> JSONResponse:
        await start(transfer_of(request), await json_body(request, limit))
        return JSONResponse({"message": "Weight update started"})

    @router.post("/start_draft_weight_update")
    async def start_draft_weight_update() -> JSONResponse:
        raise APIError(400, "this server has no speculative-decoding draft model")

    @router.post("/finish_weight_update")
    async def finish_weight_update(request: Request) -> JSONResponse:
        body = await json_body(request, limit)
        only_keys(body, ("weight_version",), "the body")
        weight_version = label(body.get("weight_version"), "weight_version")
        return JSONResponse(await finish(state, transfer_of(request), weight_version))

    @router.get("/weight_update_active")
    async def weight_update_active(request: Request) -> JSONResponse:
        return JSONResponse({"weight_update_active": transfer_of(request).session is not None})

    @router.get("/weight_info")
    async def weight_info() -> JSONResponse:
        version = state.policy_version
        return JSONResponse({"weight_version": state.weight_version, "policy_version": version})

    @router.get("/get_world_size")
    async def get_world_size(request: Request) -> JSONResponse:
        as_bool(request.query_params.get("include_dp", True), "include_dp")
        return JSONResponse({"world_size": 1})  # one process holds the whole model

    return router
