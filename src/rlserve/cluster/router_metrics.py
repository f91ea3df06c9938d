"""The router's `/metrics`: every replica's Prometheus text with a `replica="name"` label
added (one HELP/TYPE per family, so PromQL's `sum()` gives the cluster total), then the
router's own counters; `?format=json`: each replica's JSON metrics and their totals."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from rlserve.cluster.replica import Replica

SCRAPE_TIMEOUT_S = 5.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)$")
# JSON metrics that add up over replicas (rates and ratios do not).
SUMMED_JSON = (
    "queue_depth",
    "num_running",
    "num_waiting",
    "kv_blocks_used",
    "kv_blocks_total",
    "generation_tokens_per_second",
    "generated_tokens",
    "prompt_tokens",
    "preemptions",
)


class RouterMetrics:
    """Counters the router keeps per replica: requests sent, retries (a request moved off
    a replica that failed it before answering), ejections (a replica marked unhealthy),
    stream errors (a started stream that broke), and requests no replica could take."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        label = ("replica",)
        self.requests = Counter(
            "rlserve_router_requests", "Requests sent to a replica", label, registry=self.registry
        )
        self.retries = Counter(
            "rlserve_router_retries",
            "Requests retried elsewhere after a replica failed them before any byte",
            label,
            registry=self.registry,
        )
        self.ejections = Counter(
            "rlserve_router_ejections",
            "Times a replica was taken out of routing",
            label,
            registry=self.registry,
        )
        self.stream_errors = Counter(
            "rlserve_router_stream_errors",
            "Started streams that broke and ended with an error event",
            label,
            registry=self.registry,
        )
        self.unroutable = Counter(
            "rlserve_router_unroutable",
            "Requests refused with 503: no healthy replica left",
            registry=self.registry,
        )

    def count(self, counter: Counter, replica: str) -> None:
        counter.labels(replica=replica).inc()

    def value(self, counter: Counter, replica: str) -> float:
        """The counter's current value for `replica` (0 if never counted)."""
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("replica") == replica:
                    return sample.value
        return 0.0


@dataclass
class _Family:
    comments: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)


def relabel(text: str, replica: str, families: dict[str, _Family]) -> None:
    """Add `replica="name"` to every sample of a Prometheus text exposition and file the
    lines under their family in `families` (HELP/TYPE kept from the first replica)."""
    current: _Family | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = families.setdefault(parts[2], _Family())
                if line not in current.comments and len(current.comments) < 2:
                    current.comments.append(line)
            continue
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        name, labels, rest = match.groups()
        inner = labels[1:-1].strip().rstrip(",") if labels else ""
        joined = f'replica="{replica}"' + (f",{inner}" if inner else "")
        target = current if current is not None else families.setdefault(name, _Family())
        target.samples.append(f"{name}{{{joined}}}{rest}")


async def _scrape(client: httpx.AsyncClient, replica: Replica, json_form: bool) -> Any:
    params = {"format": "json"} if json_form else None
    try:
        response = await client.get(
            f"{replica.url}/metrics", params=params, timeout=SCRAPE_TIMEOUT_S
        )
        response.raise_for_status()
        return response.json() if json_form else response.text
    except (httpx.HTTPError, ValueError) as exc:
        return exc


def _replica_gauges(replicas: Iterable[Replica]) -> list[Metric]:
    healthy = GaugeMetricFamily(
        "rlserve_router_replica_healthy", "1 if the replica is in routing", labels=["replica"]
    )
    outstanding = GaugeMetricFamily(
        "rlserve_router_replica_outstanding",
        "Requests in flight on the replica through the router",
        labels=["replica"],
    )
    restarts = GaugeMetricFamily(
        "rlserve_router_replica_restarts", "Times Ray restarted the replica", labels=["replica"]
    )
    for r in replicas:
        healthy.add_metric([r.name], 1.0 if r.routable else 0.0)
        outstanding.add_metric([r.name], float(r.outstanding))
        restarts.add_metric([r.name], float(r.restarts))
    return [healthy, outstanding, restarts]


class _Static:
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


async def prometheus_text(
    client: httpx.AsyncClient, replicas: list[Replica], metrics: RouterMetrics
) -> str:
    """Every reachable replica's families relabelled, then the router's metrics."""
    reachable = [r for r in replicas if r.url is not None]
    texts = await asyncio.gather(*(_scrape(client, r, False) for r in reachable))
    families: dict[str, _Family] = {}
    for replica, text in zip(reachable, texts, strict=True):
        if isinstance(text, str):
            relabel(text, replica.name, families)
    lines = [line for fam in families.values() for line in (*fam.comments, *fam.samples)]
    own = CollectorRegistry()
    own.register(_Static(_replica_gauges(replicas)))
    router_text = generate_latest(metrics.registry) + generate_latest(own)
    return "\n".join(lines) + ("\n" if lines else "") + router_text.decode()


async def json_metrics(client: httpx.AsyncClient, replicas: list[Replica]) -> dict[str, Any]:
    """`{"replicas": {name: metrics or {"error": ...}}, "total": {...}}`."""
    reachable = [r for r in replicas if r.url is not None]
    bodies = await asyncio.gather(*(_scrape(client, r, True) for r in reachable))
    per_replica: dict[str, Any] = {r.name: {"error": "no url (starting)"} for r in replicas}
    total = dict.fromkeys(SUMMED_JSON, 0.0)
    for replica, body in zip(reachable, bodies, strict=True):
        if not isinstance(body, dict):
            per_replica[replica.name] = {"error": str(body) or type(body).__name__}
            continue
        per_replica[replica.name] = body
        for key in SUMMED_JSON:
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] += value
    return {"replicas": per_replica, "total": total}
