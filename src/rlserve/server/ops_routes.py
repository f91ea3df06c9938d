"""Operational routes: `GET /health` and `GET /metrics` (JSON, or Prometheus text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rlserve.server.metrics import prefix_cache_hit_rate
from rlserve.server.state import ServerState


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


def _wants_prometheus(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    fmt = request.query_params.get("format")
    return fmt == "prometheus" or "text/plain" in accept or "openmetrics" in accept


def ops_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        healthy = state.loop.alive
        unhealthy = "shutting_down" if state.loop.closing else "unhealthy"
        body = {
            "status": "healthy" if healthy else unhealthy,
            "model_loaded": True,
            "policy_version": state.policy_version,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        if _wants_prometheus(request):
            return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
        return JSONResponse(metrics_json(state))

    return router
