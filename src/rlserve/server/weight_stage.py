"""Two-phase weight updates, for a cluster that must change every replica or none:
`POST /stage_weights` reads and checks an update exactly as `/update_weights` does (the
same JSON path or safetensors body, the same options) and holds it, installing nothing;
`POST /commit_weights {"stage_id"}` installs it as `/update_weights` would (the same
reply); `POST /discard_weights {"stage_id"}` drops it. One update is staged at a time: a
new stage replaces the older one. The version is checked when staging and again when
committing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlserve.pause_mode import PauseMode
from rlserve.server.admin_files import path_under
from rlserve.server.admin_options import json_body, optional_str, update_options
from rlserve.server.admin_weights import (
    CheckedUpdate,
    checked_weights,
    commit_update,
    given_path,
    read_checked_weights,
    tensors_from_body,
)
from rlserve.server.auth import admin_access
from rlserve.server.errors import APIError
from rlserve.server.state import ServerState, new_id

Options = tuple[int | None, PauseMode, bool]  # version, mode, recompute_kv


@dataclass(frozen=True)
class StagedUpdate:
    stage_id: str
    update: CheckedUpdate
    options: Options


class WeightStage:
    """The one staged update of a server (None when nothing is staged)."""

    def __init__(self) -> None:
        self.staged: StagedUpdate | None = None
        self.lock = asyncio.Lock()  # one stage/commit/discard at a time

    def take(self, stage_id: str) -> StagedUpdate:
        """The staged update called `stage_id`, removed from the stage; 409 otherwise."""
        if self.staged is None or self.staged.stage_id != stage_id:
            held = self.staged.stage_id if self.staged else None
            raise APIError(
                409, f"stage_id {stage_id!r} is not staged (staged now: {held!r})", "stage_id"
            )
        staged, self.staged = self.staged, None
        return staged


def check_stage_version(state: ServerState, version: int | None) -> None:
    """400 now for a version the commit would refuse (the commit checks it again)."""
    current = state.policy_version
    if version is not None and version <= current:
        raise APIError(
            400, f"version must be > the current policy version {current}, got {version}", "version"
        )


async def read_update(state: ServerState, request: Request) -> tuple[CheckedUpdate, Options]:
    """The update in `request` read, cast and checked (400/413), with its options."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        options = update_options(request.query_params)
        check_stage_version(state, options[0])
        async with state.receive_buffer.lock:
            tensors = await tensors_from_body(
                request, state.config.max_update_bytes, state.receive_buffer
            )
            # The parsed tensors are views of the shared receive buffer: held copies.
            owned = [(name, t.clone()) for name, t in tensors.items()]
        return await asyncio.to_thread(checked_weights, state, owned), options
    body = await json_body(request, state.config.max_request_bytes)
    if "update_info" in body:
        raise APIError(400, "vLLM's update_info lifecycle is not staged; use /update_weights")
    options = update_options(body)
    check_stage_version(state, options[0])
    for field in ("model_name", "weight_type"):
        optional_str(body.get(field), field)
    field, value = given_path(body)
    path = path_under(state.config.weights_dir, value, field)
    return await asyncio.to_thread(read_checked_weights, state, path), options


async def stage_id_of(state: ServerState, request: Request) -> str:
    body = await json_body(request, state.config.max_request_bytes)
    stage_id = body.get("stage_id")
    if not isinstance(stage_id, str) or not stage_id:
        raise APIError(
            400, "the body needs a stage_id (the one /stage_weights returned)", "stage_id"
        )
    return stage_id


def weight_stage_router(state: ServerState) -> APIRouter:
    """The three routes over one `WeightStage`, guarded as the other admin routes."""
    access = admin_access(state.config)
    router = APIRouter(dependencies=[Depends(access)] if access.checks else [])
    stage = WeightStage()

    @router.post("/stage_weights")
    async def stage_weights(request: Request) -> JSONResponse:
        update, options = await read_update(state, request)
        async with stage.lock:
            stage.staged = StagedUpdate(new_id("stage"), update, options)
            staged = stage.staged
        return JSONResponse(
            {
                "stage_id": staged.stage_id,
                "num_tensors": len(update.weights),
                "version": options[0],
                "dtype_cast": update.cast_report(),
                "policy_version": state.policy_version,
            }
        )

    @router.post("/commit_weights")
    async def commit_weights(request: Request) -> JSONResponse:
        stage_id = await stage_id_of(state, request)
        async with stage.lock:
            staged = stage.take(stage_id)
            version, mode, recompute = staged.options
            new = await commit_update(state, staged.update.weights, version, mode, recompute)
        cast = staged.update.cast_report()
        return JSONResponse({"policy_version": new, "mode": mode, "dtype_cast": cast})

    @router.post("/discard_weights")
    async def discard_weights(request: Request) -> JSONResponse:
        stage_id = await stage_id_of(state, request)
        async with stage.lock:
            held = stage.staged is not None and stage.staged.stage_id == stage_id
            if held:
                stage.staged = None
        return JSONResponse({"discarded": held, "policy_version": state.policy_version})

    return router
