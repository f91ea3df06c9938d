"""Prometheus metrics: rlserve's own (`rlserve_*`: request counts/latencies, engine
gauges) and the families vLLM's dashboards read under vLLM's names (`vllm:*`, labelled
`model_name` and `engine` as vLLM labels them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import exposition as _exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlserve.server.spec_metrics import SpecDecodeCollector

if TYPE_CHECKING:
    from rlserve.outputs import RequestOutput

# What vLLM's /metrics answers a client that does not ask for OpenMetrics (older
# prometheus_client releases call it CONTENT_TYPE_LATEST).
TEXT_CONTENT_TYPE = getattr(_exposition, "CONTENT_TYPE_PLAIN_0_0_4", CONTENT_TYPE_LATEST)

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


VLLM_LABELS = ("model_name", "engine")
ENGINE_INDEX = "0"  # vLLM's label for the (only) engine behind the server
# vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards' quantiles mean the same.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0)
TTFT_BUCKETS += (2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
ITL_BUCKETS += (2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0)
E2E_BUCKETS += (60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort")  # what rlserve's engine reports


def kv_cache_usage(stats: dict[str, Any]) -> float:
    total = stats.get("kv_blocks_total", 0)
    return stats.get("kv_blocks_used", 0) / total if total else 0.0


def _vllm_values(stats: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """vLLM's gauges and counters (names without `_total`) from the engine's stats."""
    hits = stats.get("prefix_cache_hit_tokens", 0)
    gauges = {
        "vllm:num_requests_running": stats.get("num_running", 0),
        # vLLM has one waiting queue; rlserve's server queue waits for the engine's
        "vllm:num_requests_waiting": stats.get("num_waiting", 0) + stats.get("queue_depth", 0),
        "vllm:kv_cache_usage_perc": kv_cache_usage(stats),
    }
    counters = {
        "vllm:prompt_tokens": stats.get("prompt_tokens_total", 0),
        "vllm:generation_tokens": stats.get("generated_tokens", 0),
        # every prompt token looked up is either served from the cache or prefilled
        "vllm:prefix_cache_queries": hits + stats.get("prompt_tokens_computed", 0),
        "vllm:prefix_cache_hits": hits,
        "vllm:num_preemptions": stats.get("preemptions", 0),
    }
    return gauges, counters


_VLLM_DOCS = {
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:prompt_tokens": "Number of prefill tokens processed.",
    "vllm:generation_tokens": "Number of generation tokens processed.",
    "vllm:prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "vllm:prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "vllm:num_preemptions": "Cumulative number of preemption from the engine.",
}


class _VllmEngineCollector:
    """vLLM's engine gauges and counters, read from the stats snapshot at scrape time."""

    def __init__(
        self, stats: Callable[[], dict[str, Any]], labels: Callable[[], list[str]]
    ) -> None:
        self._stats = stats
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        gauges, counters = _vllm_values(self._stats())
        labels = self._labels()
        for values, family in ((gauges, GaugeMetricFamily), (counters, CounterMetricFamily)):
            for name, value in values.items():
                metric = family(name, _VLLM_DOCS[name], labels=VLLM_LABELS)
                metric.add_metric(labels, float(value))
                yield metric


class VllmMetrics:
    """The `vllm:*` families: engine numbers at scrape time, latencies per request."""

    def __init__(
        self, registry: CollectorRegistry, stats: Callable[[], dict[str, Any]], model_name: str
    ) -> None:
        self.model_name = ""
        self.ttft = _histogram(
            "vllm:time_to_first_token_seconds", "time to first token", TTFT_BUCKETS, registry
        )
        self.itl = _histogram(
            "vllm:inter_token_latency_seconds", "inter-token latency", ITL_BUCKETS, registry
        )
        self.e2e = _histogram(
            "vllm:e2e_request_latency_seconds", "e2e request latency", E2E_BUCKETS, registry
        )
        doc = "Count of successfully processed requests."
        reason_labels = [*VLLM_LABELS, "finished_reason"]
        self.success = Counter("vllm:request_success", doc, reason_labels, registry=registry)
        registry.register(_VllmEngineCollector(stats, self.labels))
        if model_name:
            self.serve(model_name)

    def labels(self) -> list[str]:
        return [self.model_name, ENGINE_INDEX]

    def serve(self, model_name: str) -> None:
        """Label the families with the served model's name; its series show at once, as
        vLLM's do (a dashboard sees zeros, not gaps, before the first request)."""
        if model_name == self.model_name:
            return
        old = self.labels()
        self.model_name = model_name
        for metric in (self.ttft, self.itl, self.e2e):
            if old[0]:
                metric.remove(*old)
            metric.labels(*self.labels())
        for reason in FINISH_REASONS:
            if old[0]:
                self.success.remove(*old, reason)
            self.success.labels(*self.labels(), reason)


def _histogram(
    name: str, what: str, buckets: tuple[float, ...], registry: CollectorRegistry
) -> Histogram:
    doc = f"Histogram of {what} in seconds."
    return Histogram(name, doc, VLLM_LABELS, buckets=buckets, registry=registry)


class RequestTimer:
    """Times the samples of one HTTP request as vLLM times requests: time to first token
    from submission, one inter-token latency per later delta that brings tokens, and the
    end-to-end latency and finish reason when a sample finishes. Call it with every
    delta, on the event loop, as it arrives."""

    def __init__(self, metrics: VllmMetrics, clock: Callable[[], float] = time.monotonic):
        self._metrics = metrics
        self._clock = clock
        self._start = clock()
        self._last_token: dict[tuple[int, int], float] = {}
        self._finished: set[tuple[int, int]] = set()

    def __call__(self, prompt_index: int, delta: RequestOutput) -> None:
        now = self._clock()
        metrics = self._metrics
        labels = metrics.labels()
        for sample in delta.outputs:
            key = (prompt_index, sample.index)
            if key in self._finished:
                continue
            if sample.token_ids:
                last = self._last_token.get(key)
                since = now - (self._start if last is None else last)
                (metrics.ttft if last is None else metrics.itl).labels(*labels).observe(since)
                self._last_token[key] = now
            reason = sample.finish_reason or ("abort" if delta.finished else None)
            if reason is not None:
                self._finished.add(key)
                metrics.e2e.labels(*labels).observe(now - self._start)
                metrics.success.labels(*labels, reason).inc()


class ServerMetrics:
    """A private registry per app, so several servers can live in one process.

    `model_name` is the `model_name` label of the `vllm:*` families; `request_timer()`
    times one HTTP request's engine requests into vLLM's latency histograms."""

    def __init__(self, stats: Callable[[], dict[str, Any]], model_name: str = "") -> None:
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
        self.vllm = VllmMetrics(self.registry, stats, model_name)
        self.registry.register(SpecDecodeCollector(stats, self.vllm.labels))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def request_timer(self) -> RequestTimer:
        """A timer for one HTTP request, started now (see `RequestTimer`)."""
        return RequestTimer(self.vllm)

    def exposition(self) -> tuple[bytes, str]:
        """Prometheus text 0.0.4 and its content type, whatever the scraper prefers:
        prometheus_client's OpenMetrics encoder rewrites the `:` of `vllm:` names to `_`
        in samples (escaping=underscores), and every scraper reads 0.0.4."""
        return _exposition.generate_latest(self.registry), TEXT_CONTENT_TYPE


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
