"""The router's admin routes: every one reaches every replica (`cluster.fanout`).

`/update_weights` is two-phase (stage and check on every replica, then commit on every
one; if any refuses, none changes and the reply names it); adapters load on all or, after
a failure, are unloaded from those that loaded them; pause/resume/abort, cache resets and
the SGLang/vLLM spellings of them are broadcast. `GET /policy_version` is the cluster's
one version. One-phase weight loads of other dialects (SGLang's
`/update_weights_from_disk`, vLLM's weight-transfer routes) are refused here: sent
replica by replica they could leave the replicas on different versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from rlserve.server.auth import Access
from rlserve.server.body_limits import read_limited
from rlserve.server.errors import error_response

if TYPE_CHECKING:
    from rlserve.cluster.fanout import FanoutReply
    from rlserve.cluster.replica_set import ReplicaSet

WEIGHT_ROUTES = ("/update_weights",)
ADAPTER_LOADS = ("/load_adapter", "/upload_adapter", "/load_lora_adapter", "/v1/load_lora_adapter")
BROADCAST_POSTS = (
    "/unload_adapter",
    "/unload_lora_adapter",
    "/v1/unload_lora_adapter",
    "/pause",
    "/resume",
    "/abort",
    "/reset_prefix_cache",
    "/flush_cache",
    "/pause_generation",
    "/continue_generation",
    "/abort_request",
    "/abort_requests",
    "/sleep",
    "/wake_up",
    "/release_memory_occupation",
    "/resume_memory_occupation",
    "/update_weight_version",
)
ONE_PHASE_WEIGHT_ROUTES = (
    "/update_weights_from_disk",
    "/init_weight_transfer_engine",
    "/start_weight_update",
    "/start_draft_weight_update",
    "/finish_weight_update",
)


def admin_access(api_key: str | None, admin_key: str | None) -> Access:
    """As `rlserve serve`: the admin key, else the API key, else loopback clients only (the
    router refuses a non-loopback host without a key unless --allow-open-admin)."""
    if admin_key:
        return Access(admin_key, "admin key")
    if api_key:
        return Access(api_key)
    return Access(loopback_only=True)


def admin_router(
    replica_set: ReplicaSet, client: Callable[[], httpx.AsyncClient], access: Access, limit: int
) -> APIRouter:
    """The admin routes over `replica_set`; `client()` is the router's HTTP client and
    `limit` the largest body held to fan out (`max_update_bytes`)."""
    from rlserve.cluster import fanout

    router = APIRouter(dependencies=[Depends(access)] if access.checks else [])

    async def fan_out(request: Request, kind: str) -> FanoutReply:
        body = bytes(await read_limited(request, limit, "--max-update-bytes"))
        content_type = request.headers.get("content-type", "application/json")
        headers = dict(request.headers)
        path = request.url.path
        if kind == "weights":  # a streamed update takes its options in the query
            query = list(request.query_params.multi_items())
            return await fanout.update_weights(
                replica_set, client(), body, content_type, headers, query
            )
        if kind == "adapter":
            return await fanout.load_adapter(
                replica_set, client(), path, body, content_type, headers
            )
        query = request.url.query  # vLLM's /pause takes its options in the query
        target = f"{path}?{query}" if query else path
        return await fanout.broadcast(
            replica_set, client(), request.method, target, body, content_type, headers
        )

    def route(path: str, kind: str, methods: tuple[str, ...] = ("POST",)) -> None:
        async def handler(request: Request) -> Response:
            reply = await fan_out(request, kind)
            return JSONResponse(reply.body, reply.status)

        router.add_api_route(path, handler, methods=list(methods))

    for path in WEIGHT_ROUTES:
        route(path, "weights")
    for path in ADAPTER_LOADS:
        route(path, "adapter")
    for path in BROADCAST_POSTS:
        route(path, "broadcast", ("GET", "POST") if path == "/flush_cache" else ("POST",))

    @router.get("/policy_version")
    async def policy_version() -> Response:
        try:
            version = await fanout.policy_version(replica_set, client())
        except Exception as exc:  # replicas disagree or none answers: no one number
            return error_response(503, f"no single policy version: {exc}")
        return JSONResponse({"policy_version": version})

    for path in ONE_PHASE_WEIGHT_ROUTES:
        router.add_api_route(path, _one_phase_refused, methods=["POST"])
    return router


async def _one_phase_refused(request: Request) -> Response:
    return error_response(
        400,
        f"the router does not forward {request.url.path}: one-phase weight loads sent to "
        "each replica could leave them on different versions; use POST /update_weights "
        "(staged and checked on every replica, then committed on all or none)",
    )
