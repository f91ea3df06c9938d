"""Prometheus metrics (request counts/latencies + engine gauges) and the JSON view."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACKED_PATHS = ("/v1/completions", "/v1/chat/completions", "/generate", "/v1/models")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_GAUGES = {
    "num_running": ("rlserve_num_sequences_running", "Sequences in the running batch"),
    "num_waiting": ("rlserve_num_sequences_waiting", "Sequences queued in the engine"),
    "queue_depth": ("rlserve_queue_depth", "Sequences waiting for a batch slot"),
    "kv_blocks_used": ("rlserve_kv_blocks_used", "KV-cache blocks in use"),
    "kv_blocks_total": ("rlserve_kv_blocks_total", "KV-cache blocks in the pool"),
    "tokens_per_second": ("rlserve_generation_tokens_per_second", "Recent generation rate"),
    "policy_version": ("rlserve_policy_version", "Weight version currently loaded"),
}
_COUNTERS = {
    "generated_tokens": ("rlserve_generation_tokens", "Tokens generated"),
    "prompt_tokens_total": ("rlserve_prompt_tokens", "Prompt tokens received"),
    "prompt_tokens_computed": ("rlserve_prompt_tokens_computed", "Prompt tokens prefilled"),
    "prefix_cache_hit_tokens": ("rlserve_prefix_cache_hit_tokens", "Prompt tokens from cache"),
    "preemptions": ("rlserve_preemptions", "Sequences preempted for KV space"),
    "requests_finished": ("rlserve_engine_requests_finished", "Engine requests finished"),
}


def prefix_cache_hit_rate(stats: dict[str, Any]) -> float:
    total = stats.get("prompt_tokens_total", 0)
    return stats.get("prefix_cache_hit_tokens", 0) / total if total else 0.0


class _EngineCollector:
    """Reads the engine loop's latest stats snapshot at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for key, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=float(stats.get(key, 0)))
        yield GaugeMetricFamily(
            "rlserve_prefix_cache_hit_rate",
            "Share of prompt tokens served from the prefix cache",
            value=prefix_cache_hit_rate(stats),
        )
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(stats.get(key, 0)))


class ServerMetrics:
    """A private registry per app, so several servers can live in one process."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rlserve_http_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rlserve_http_request_duration_seconds",
            "Time from request to the last byte of the response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(stats))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and times them until the final body chunk (streams included)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in TRACKED_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        recorded = False

        async def timed_send(message: Message) -> None:
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                recorded = True
                self.metrics.observe(path, status, time.perf_counter() - start)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not recorded:  # the client went away mid-response
                self.metrics.observe(path, status, time.perf_counter() - start)
