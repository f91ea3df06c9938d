"""vLLM's admin routes (`vllm/entrypoints/serve/dev/rlhf/api_router.py`, `dev/cache/`,
`lora/api_router.py`, `serving_models.py`), on rlserve's engine, under the admin key.

`POST /pause` is shared with rlserve's own: a JSON body is rlserve's (`mode` default
"keep"); no body is vLLM's, with `mode` (abort / wait / keep, default "abort"; the same
PauseMode names), `clear_cache` and the deprecated `wait_for_inflight_requests` in the
query. vLLM's "wait" answers once the running requests finished. LoRA paths are read
under `--weights-dir` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from rlserve.pause_mode import PauseMode
from rlserve.server.admin_adapters import adapter_name, install_adapter, unload_adapter_named
from rlserve.server.admin_engine import engine_call
from rlserve.server.admin_files import path_under
from rlserve.server.admin_options import as_bool, json_body
from rlserve.server.auth import admin_access
from rlserve.server.errors import APIError, shown
from rlserve.server.state import ServerState

VLLM_PAUSE_QUERY = ("mode", "clear_cache", "wait_for_inflight_requests")


def vllm_pause_mode(query: Mapping[str, Any]) -> tuple[PauseMode, bool]:
    """(mode, clear_cache) from vLLM's /pause query string; 400 on bad values."""
    value = query.get("mode", PauseMode.ABORT.value)
    modes = tuple(mode.value for mode in PauseMode)
    if not isinstance(value, str) or value not in modes:
        raise APIError(400, f"mode must be one of {modes}, got {shown(value)}", "mode")
    mode = PauseMode(value)
    if as_bool(query.get("wait_for_inflight_requests", False), "wait_for_inflight_requests"):
        mode = PauseMode.WAIT  # the deprecated spelling of mode=wait
    return mode, as_bool(query.get("clear_cache", True), "clear_cache")


async def vllm_pause(state: ServerState, query: Mapping[str, Any]) -> JSONResponse:
    """vLLM's pause: abort / wait for / freeze the running requests, then (unless "keep")
    clear the prefix cache."""
    mode, clear_cache = vllm_pause_mode(query)
    await state.loop.pause(mode)
    if mode == PauseMode.WAIT:  # answer once nothing runs, as vLLM does
        await state.loop.call(lambda _: None, drain=True)
    if clear_cache and mode != PauseMode.KEEP:
        await engine_call(state, lambda e: e.reset_prefix_cache())
    return JSONResponse(
        {"status": "paused", "paused": mode, "policy_version": state.policy_version}
    )


def request_ids(body: dict[str, Any]) -> list[str]:
    """vLLM's `request_ids`: a list of strings (400 otherwise)."""
    ids = body.get("request_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise APIError(400, "request_ids must be a list of non-empty strings", "request_ids")
    return ids


def lora_name(body: dict[str, Any], state: ServerState) -> str:
    name = adapter_name(body.get("lora_name"), state)
    if name is None:
        raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", "lora_name")
    return name


async def load_lora_adapter(state: ServerState, body: dict[str, Any]) -> Response:
    name = lora_name(body, state)
    if body.get("lora_path") in (None, ""):
        raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", "lora_path")
    inplace = as_bool(body.get("load_inplace", False), "load_inplace")
    if name in state.adapters() and not inplace:
        raise APIError(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
    folder = path_under(state.config.weights_dir, body["lora_path"], "lora_path")
    await install_adapter(state, folder, name, None, body["lora_path"])
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(state: ServerState, body: dict[str, Any]) -> Response:
    name = lora_name(body, state)
    if name not in state.adapters():
        raise APIError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
    await unload_adapter_named(state, name)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


def vllm_router(state: ServerState) -> APIRouter:
    """vLLM's admin routes (but /pause, see the module docstring) bound to `state`."""
    access = admin_access(state.config)
    router = APIRouter(dependencies=[Depends(access)] if access.checks else [])
    limit = state.config.max_request_bytes

    @router.get("/is_paused")
    async def is_paused() -> JSONResponse:
        paused = state.paused
        return JSONResponse({"is_paused": paused is not None, "paused": paused})

    @router.post("/reset_prefix_cache")
    async def reset_prefix_cache(request: Request) -> Response:
        for flag in ("reset_running_requests", "reset_external"):
            as_bool(request.query_params.get(flag, False), flag)  # nothing else to reset
        await engine_call(state, lambda e: e.reset_prefix_cache())
        return Response(status_code=200)

    @router.post("/abort_requests")
    async def abort_requests(request: Request) -> JSONResponse:
        ids = request_ids(await json_body(request, limit))
        aborted = 0
        for request_id in ids:
            aborted += await state.loop.abort_requests(request_id)
        return JSONResponse({"aborted": aborted})

    @router.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> Response:
        return await load_lora_adapter(state, await json_body(request, limit))

    @router.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request) -> Response:
        return await unload_lora_adapter(state, await json_body(request, limit))

    return router
