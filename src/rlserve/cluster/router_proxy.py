"""Forward one request to a replica and its reply back unchanged, with retries.

A request that has not sent the client anything yet is retried on another replica when
its replica cannot be reached, breaks the connection, or answers 502/503/504 (the
connection errors also take the replica out of routing until the health loop sees it
healthy). A 500 is passed on as it is: it is the replica's answer to this request, and a
request that breaks engines must not be tried on every one of them. A stream is
committed once its first complete SSE event arrives; if it breaks after that, the client
gets an error event in vLLM's shape (`data: {"error": {...}}`) and `data: [DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from fastapi.responses import Response, StreamingResponse

from rlserve.cluster.routing_policy import NoReplica, RoutingKey, choose_replica
from rlserve.server.errors import error_body, error_response

if TYPE_CHECKING:
    from rlserve.cluster.replica import Replica
    from rlserve.cluster.replica_set import ReplicaSet
    from rlserve.cluster.router_metrics import RouterMetrics

REPLICA_HEADER = "x-rlserve-replica"  # which replica answered (for clients and logs)
RETRIED_STATUSES = (502, 503, 504)
HOP_HEADERS = frozenset(
    ("host", "content-length", "connection", "keep-alive", "transfer-encoding", "te")
    + ("trailer", "upgrade", "proxy-authorization", "proxy-authenticate")
)


@dataclass(frozen=True)
class Outgoing:
    """The client's request as the router forwards it."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    key: RoutingKey


class _Retry(Exception):
    """This replica failed the request before anything reached the client."""


@dataclass
class Proxy:
    """Sends `Outgoing` requests to the replicas `replica_set` can route to."""

    replica_set: ReplicaSet
    client: httpx.AsyncClient
    metrics: RouterMetrics
    policy: str
    retries: int

    async def forward(self, out: Outgoing) -> Response:
        tried: dict[str, str] = {}
        for _ in range(self.retries + 1):
            try:
                replica = choose_replica(self.policy, self.replica_set.routable(), out.key, tried)
            except NoReplica as exc:
                return self._unroutable(str(exc), tried)
            try:
                return await self._attempt(replica, out)
            except _Retry as exc:
                tried[replica.name] = str(exc)
                self.metrics.count(self.metrics.retries, replica.name)
        return self._unroutable(f"the request failed on {len(tried)} replicas", tried)

    def _unroutable(self, message: str, tried: Mapping[str, str]) -> Response:
        self.metrics.unroutable.inc()
        details = "; ".join(f"{name}: {error}" for name, error in tried.items())
        return error_response(503, message + (f" ({details})" if details else ""))

    async def _attempt(self, replica: Replica, out: Outgoing) -> Response:
        replica.outstanding += 1
        self.metrics.count(self.metrics.requests, replica.name)
        handed_over = False
        try:
            upstream = await self._send(replica, out)
            try:
                if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                    response = await self._stream(replica, upstream)
                    handed_over = True
                    return response
                return await self._whole(replica, upstream)
            finally:
                if not handed_over:
                    await upstream.aclose()
        finally:
            if not handed_over:
                replica.outstanding -= 1

    async def _send(self, replica: Replica, out: Outgoing) -> httpx.Response:
        url = f"{replica.url}{out.path}" + (f"?{out.query}" if out.query else "")
        request = self.client.build_request(
            out.method, url, content=out.body, headers=forwarded(out.headers)
        )
        try:
            return await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._failed(replica, exc) from exc

    def _failed(self, replica: Replica, exc: Exception) -> _Retry:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        self.eject(replica, reason)
        return _Retry(reason)

    def eject(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            self.metrics.count(self.metrics.ejections, replica.name)
        self.replica_set.mark_unhealthy(replica, reason)

    async def _whole(self, replica: Replica, upstream: httpx.Response) -> Response:
        try:
            body = b"".join([chunk async for chunk in upstream.aiter_raw()])
        except httpx.TransportError as exc:
            raise self._failed(replica, exc) from exc
        if upstream.status_code in RETRIED_STATUSES:
            raise _Retry(f"HTTP {upstream.status_code}: {body[:200].decode(errors='replace')}")
        return Response(body, upstream.status_code, replied(upstream, replica))

    async def _stream(self, replica: Replica, upstream: httpx.Response) -> StreamingResponse:
        events = SseEvents(upstream.aiter_raw())
        try:
            first = await events.first()
        except httpx.TransportError as exc:
            raise self._failed(replica, exc) from exc
        if upstream.status_code in RETRIED_STATUSES:
            raise _Retry(f"HTTP {upstream.status_code} before the stream started")
        release = _Release(replica, upstream)
        body = self._relay(replica, release, first, events)
        return RelayedStream(body, upstream.status_code, replied(upstream, replica), release)

    async def _relay(
        self, replica: Replica, release: _Release, first: bytes, events: SseEvents
    ) -> AsyncIterator[bytes]:
        try:
            yield first
            try:
                async for chunk in events.rest():
                    yield chunk
            except httpx.TransportError as exc:
                self.metrics.count(self.metrics.stream_errors, replica.name)
                self.eject(replica, f"{type(exc).__name__}: {exc}")
                yield broken_stream_events(replica.name, exc)
        finally:
            await release()


class _Release:
    """Once, whoever comes first (the stream's end, or the response being dropped before
    it started): the replica's request count goes down and its connection is closed."""

    def __init__(self, replica: Replica, upstream: httpx.Response) -> None:
        self._replica = replica
        self._upstream: httpx.Response | None = upstream

    async def __call__(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        self._replica.outstanding -= 1
        with anyio.CancelScope(shield=True):
            await upstream.aclose()


class RelayedStream(StreamingResponse):
    """A StreamingResponse that releases its replica even if its body never ran."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        status: int,
        headers: Mapping[str, str],
        release: _Release,
    ) -> None:
        super().__init__(body, status, headers)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


class SseEvents:
    """An SSE byte stream cut at event boundaries, so a stream that breaks never hands
    the client half an event (its tail is dropped, then the error event follows)."""

    def __init__(self, raw: AsyncIterator[bytes]) -> None:
        self._raw = raw
        self._pending = b""

    def _complete(self) -> bytes:
        end = 0
        for separator in (b"\n\n", b"\r\n\r\n"):
            at = self._pending.rfind(separator)
            if at >= 0:
                end = max(end, at + len(separator))
        done, self._pending = self._pending[:end], self._pending[end:]
        return done

    async def first(self) -> bytes:
        """Bytes up to the end of the first complete event (or all, at the end)."""
        async for chunk in self._raw:
            self._pending += chunk
            done = self._complete()
            if done:
                return done
        done, self._pending = self._pending, b""
        return done

    async def rest(self) -> AsyncIterator[bytes]:
        async for chunk in self._raw:
            self._pending += chunk
            done = self._complete()
            if done:
                yield done
        if self._pending:
            yield self._pending


def broken_stream_events(replica: str, exc: Exception) -> bytes:
    """The error event (vLLM's streamed error shape, OpenAI's error object) and [DONE]."""
    message = (
        f"replica {replica} failed while streaming ({type(exc).__name__}); the output "
        "above is incomplete: send the request again"
    )
    event = json.dumps(error_body(502, message, code=502))
    return f"data: {event}\n\ndata: [DONE]\n\n".encode()


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers minus the hop-by-hop ones (Authorization passes unchanged)."""
    return {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}


def replied(upstream: httpx.Response, replica: Replica) -> dict[str, str]:
    """The replica's response headers (uvicorn adds its own date and server)."""
    dropped = HOP_HEADERS | {"date", "server"}
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in dropped}
    headers[REPLICA_HEADER] = replica.name
    return headers


def parse_body(body: bytes) -> Any:
    """The JSON value of a body for the routing key (None if it is not JSON: the replica
    gives the client its 400)."""
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
