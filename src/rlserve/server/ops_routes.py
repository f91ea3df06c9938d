"""Operational routes: `/health`, `/ping`, `/version`, `/metrics` (Prometheus text, or
JSON), and the tokenizer routes (`tokenize_routes`) behind the API key."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from rlserve.server.auth import api_access
from rlserve.server.metrics import prefix_cache_hit_rate
from rlserve.server.state import ServerState
from rlserve.server.tokenize_routes import tokenize_router

JSON_TYPE = "application/json"
TEXT_TYPES = ("text/plain", "application/openmetrics-text")


def server_version() -> str:
    """rlserve's installed version (the server layer may not import the package root)."""
    try:
        return metadata.version("rlserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def metrics_json(state: ServerState) -> dict[str, Any]:
    """Seed 002's fields first, then the engine's live numbers."""
    stats = state.loop.stats()
    return {
        "current_policy_version": int(stats.get("policy_version", 0)),
        "queue_depth": stats["queue_depth"],
        "max_batch_size": state.loop.max_batch,
        "flush_interval_ms": state.config.flush_interval_ms,
        "num_running": stats.get("num_running", 0),
        "num_waiting": stats.get("num_waiting", 0),
        "kv_blocks_used": stats.get("kv_blocks_used", 0),
        "kv_blocks_total": stats.get("kv_blocks_total", 0),
        "prefix_cache_hit_rate": prefix_cache_hit_rate(stats),
        "generation_tokens_per_second": stats.get("tokens_per_second", 0.0),
        "generated_tokens": stats.get("generated_tokens", 0),
        "prompt_tokens": stats.get("prompt_tokens_total", 0),
        "preemptions": stats.get("preemptions", 0),
    }


def accept_quality(accept: str, media_types: tuple[str, ...]) -> float:
    """The highest q-value `accept` gives any of `media_types` by name (wildcards do not
    count: only a client that names JSON gets JSON)."""
    best = 0.0
    for entry in accept.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        if media.lower() not in media_types:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best = max(best, quality if 0.0 <= quality <= 1.0 else 0.0)
    return best


def wants_json(request: Request) -> bool:
    """JSON for `?format=json` or an Accept that prefers `application/json` to text;
    Prometheus text otherwise (what Prometheus, vLLM dashboards and autoscalers read)."""
    fmt = request.query_params.get("format")
    if fmt in ("json", "prometheus"):
        return fmt == "json"
    accept = request.headers.get("accept", "")
    json_quality = accept_quality(accept, (JSON_TYPE,))
    return json_quality > 0 and json_quality >= accept_quality(accept, TEXT_TYPES)


def ops_router(state: ServerState) -> APIRouter:
    """The operational routes bound to `state`; the tokenizer routes need the API key."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        healthy = state.loop.alive
        unhealthy = "shutting_down" if state.loop.closing else "unhealthy"
        body = {
            "status": "healthy" if healthy else unhealthy,
            "model_loaded": True,
            "policy_version": state.policy_version,
            "memory_released": state.loop.stats().get("memory_released", []),
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @router.api_route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        """vLLM's (and SageMaker's) liveness check: an empty 200, or 503."""
        return Response(status_code=200 if state.loop.alive else 503)

    @router.get("/version")
    async def version() -> Response:
        return JSONResponse({"version": server_version()})

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        if wants_json(request):
            return JSONResponse(metrics_json(state))
        body, content_type = state.metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    access = api_access(state.config)
    guarded = [Depends(access)] if access.checks else []
    router.include_router(tokenize_router(state), dependencies=guarded)
    return router
