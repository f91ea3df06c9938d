"""The router: one OpenAI-compatible endpoint in front of a `ReplicaSet`.

Generation routes (`/v1/completions`, `/v1/chat/completions`, SGLang's `/generate`, the
tokenizer routes) go to one replica the routing policy picks, their bytes passed through
unchanged (`router_proxy`); other GET routes go to the least busy replica; the admin
routes reach every replica (`router_admin`). `/health` lists the replicas, `/metrics`
aggregates theirs. A health loop probes the replicas every `health_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rlserve.cluster.router_admin import admin_access, admin_router
from rlserve.cluster.router_config import RouterConfig
from rlserve.cluster.router_metrics import RouterMetrics, json_metrics, prometheus_text
from rlserve.cluster.router_proxy import Outgoing, Proxy, parse_body
from rlserve.cluster.routing_policy import RoutingKey, canonical_policy, routing_key
from rlserve.server.auth import Access
from rlserve.server.body_limits import read_limited
from rlserve.server.errors import error_response, install_error_handlers
from rlserve.server.http_utils import unless_client_left
from rlserve.server.metrics import TEXT_CONTENT_TYPE
from rlserve.server.ops_routes import server_version, wants_json

if TYPE_CHECKING:
    from rlserve.cluster.replica_set import ReplicaSet

log = logging.getLogger("rlserve.router")

ROUTED_POSTS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/generate",
    "/tokenize",
    "/detokenize",
)
CONNECT_TIMEOUT_S = 10.0


class RouterState:
    """What the routes share: the replicas, the HTTP client (made at startup), counters."""

    def __init__(self, replica_set: ReplicaSet, config: RouterConfig) -> None:
        self.replica_set = replica_set
        self.config = config
        self.metrics = RouterMetrics()
        self.policy = canonical_policy(replica_set.config.routing)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the router's HTTP client exists only while the app runs")
        return self._client

    def proxy(self) -> Proxy:
        retries = self.replica_set.config.request_retries
        return Proxy(self.replica_set, self.client, self.metrics, self.policy, retries)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # Generations may run for minutes: no read timeout, only a connect timeout.
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            self._client = client
            health = asyncio.create_task(self._health_loop())
            try:
                yield
            finally:
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
                self._client = None

    async def _health_loop(self) -> None:
        interval = self.replica_set.config.health_interval_s
        while True:
            await self.health_round()
            await asyncio.sleep(interval)

    async def health_round(self) -> None:
        """One probe of every replica; a replica leaving routing counts as an ejection."""
        before = {r.name: r.routable for r in self.replica_set.replicas}
        try:
            await self.replica_set.check_health(self.client)
        except Exception:  # a failing round must not stop the loop
            log.exception("health round failed")
        for replica in self.replica_set.replicas:
            if before.get(replica.name) and not replica.routable:
                self.metrics.count(self.metrics.ejections, replica.name)
                log.warning("replica %s left routing: %s", replica.name, replica.last_error)


def create_router_app(replica_set: ReplicaSet, config: RouterConfig | None = None) -> FastAPI:
    """The router app over a started `replica_set` (the caller starts and closes it)."""
    config = config or RouterConfig()
    cluster = replica_set.config
    config.check_exposure(cluster.api_key, cluster.admin_key)
    state = RouterState(replica_set, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with state.running():
            yield

    app = FastAPI(title="rlserve router", lifespan=lifespan)
    app.state.router = state
    install_error_handlers(app)
    app.include_router(ops_router(state))
    admin = admin_access(cluster.api_key, cluster.admin_key)
    app.include_router(
        admin_router(replica_set, lambda: state.client, admin, config.max_update_bytes)
    )
    app.include_router(proxy_router(state, Access(cluster.api_key), admin))
    return app


def ops_router(state: RouterState) -> APIRouter:
    """`/health` (the replicas), `/ping`, `/version`, `/metrics` (aggregated)."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        replicas = state.replica_set.replicas
        routable = sum(r.routable for r in replicas)
        body = {
            "status": "healthy" if routable else "unhealthy",
            "routing": state.policy,
            "replicas_routable": routable,
            "replicas": [r.describe() for r in replicas],
        }
        return JSONResponse(body, status_code=200 if routable else 503)

    @router.api_route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        return Response(status_code=200 if state.replica_set.routable() else 503)

    @router.get("/version")
    async def version() -> Response:
        return JSONResponse({"version": server_version()})

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        replicas = state.replica_set.replicas
        if wants_json(request):
            return JSONResponse(await json_metrics(state.client, replicas))
        text = await prometheus_text(state.client, replicas, state.metrics)
        return Response(text, headers={"Content-Type": TEXT_CONTENT_TYPE})

    return router


def proxy_router(state: RouterState, api: Access, admin: Access) -> APIRouter:
    """Generation routes by the policy; other GETs to the least busy replica; any other
    path is a 404 naming what the router serves."""
    router = APIRouter()
    api_guard = [Depends(api)] if api.checks else []
    admin_guard = [Depends(admin)] if admin.checks else []
    limit = state.config.max_request_bytes

    async def routed(request: Request) -> Response:
        body = bytes(await read_limited(request, limit, "--max-request-bytes"))
        key = routing_key(parse_body(body), request.headers)
        return await unless_client_left(
            request, state.proxy().forward(_outgoing(request, body, key))
        )

    async def any_replica(request: Request) -> Response:
        outgoing = _outgoing(request, b"", RoutingKey())
        return await unless_client_left(request, state.proxy().forward(outgoing))

    for path in ROUTED_POSTS:
        router.add_api_route(path, routed, methods=["POST"], dependencies=api_guard)
    router.add_api_route("/v1/models", any_replica, methods=["GET"], dependencies=api_guard)
    router.add_api_route(
        "/v1/models/{model_id:path}", any_replica, methods=["GET"], dependencies=api_guard
    )
    # Other GETs (SGLang's /get_model_info, /get_weight_version, vLLM's /is_paused, ...)
    # read one replica's state; in rlserve they sit behind the admin key.
    router.add_api_route("/{path:path}", any_replica, methods=["GET"], dependencies=admin_guard)
    router.add_api_route("/{path:path}", _not_routed, methods=["POST", "PUT", "PATCH", "DELETE"])
    return router


def _outgoing(request: Request, body: bytes, key: RoutingKey) -> Outgoing:
    return Outgoing(request.method, request.url.path, request.url.query, request.headers, body, key)


async def _not_routed(request: Request) -> Response:
    return error_response(
        404,
        f"the router has no route {request.method} {request.url.path}; it forwards "
        f"POST {', '.join(ROUTED_POSTS)}, GET routes, and the admin routes to every replica",
    )
