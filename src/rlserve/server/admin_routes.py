"""RL admin routes: weight updates, LoRA adapters, pause/resume/abort, policy version.

Every response carries the engine's `policy_version`, already visible in `/health` and
`/metrics` when the response arrives. Access: see `auth.admin_access`. Paths are only read
under `--weights-dir`; JSON bodies are strict and limited to `--max-request-bytes`.
Weight updates: `admin_weights`; adapters: `admin_adapters`. `/pause` without a body is
vLLM's (`vllm_routes`); the other SGLang and vLLM routes: `sglang_routes`, `vllm_routes`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlserve.server.admin_adapters import load_adapter, unload_adapter, upload_adapter
from rlserve.server.admin_engine import reply
from rlserve.server.admin_options import as_bool, as_mode, json_body
from rlserve.server.admin_weights import update_weights
from rlserve.server.auth import admin_access
from rlserve.server.errors import APIError
from rlserve.server.http_utils import decode_json, read_body
from rlserve.server.state import ServerState, post_routes
from rlserve.server.vllm_routes import VLLM_PAUSE_QUERY, vllm_pause


def admin_router(state: ServerState) -> APIRouter:
    """The admin routes bound to `state`, guarded as `auth.admin_access` says."""
    access = admin_access(state.config)
    router = APIRouter(dependencies=[Depends(access)] if access.checks else [])
    limit = state.config.max_request_bytes

    handlers = {
        "/update_weights": update_weights,
        "/load_adapter": load_adapter,
        "/upload_adapter": upload_adapter,
        "/unload_adapter": unload_adapter,
    }
    post_routes(router, state, handlers)

    @router.post("/pause")
    async def pause_route(request: Request) -> JSONResponse:
        raw = await read_body(request, limit)
        vllm_query = any(name in request.query_params for name in VLLM_PAUSE_QUERY)
        if not raw.strip():  # vLLM's dialect: options in the query (see vllm_routes)
            return await vllm_pause(state, request.query_params)
        if vllm_query:
            raise APIError(400, "give the pause options in the JSON body or the query, not both")
        body = decode_json(raw)
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        mode = as_mode(body.get("mode"))
        await state.loop.pause(mode)
        return reply(state, paused=mode)

    @router.post("/resume")
    async def resume_route(request: Request) -> JSONResponse:
        body = await json_body(request, limit)
        recompute = as_bool(body.get("recompute_kv", False), "recompute_kv")
        await state.loop.resume(recompute_kv=recompute)
        return reply(state, paused=state.paused, status="resumed")  # status: vLLM's reply

    @router.post("/abort")
    async def abort_route(request: Request) -> JSONResponse:
        request_id = (await json_body(request, limit)).get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            raise APIError(400, "request_id must be a string", "request_id")
        return reply(state, aborted=await state.loop.abort_requests(request_id))

    @router.get("/policy_version")
    async def policy_version_route() -> JSONResponse:
        return reply(state, paused=state.paused)

    return router
