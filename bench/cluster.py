"""The router on Ray: its overhead per request, throughput with 1 and 2 replicas, and the
time of one weight update across the replicas.

Starts local Ray and two clusters of the bundled model (1 replica, 2 replicas; 1 CPU
each), a router in front of each, then measures:
- overhead: median latency of a 1-token completion through the router minus direct to
  the same replica (sequential requests);
- throughput: completion tokens/s of `--requests` concurrent requests (32 tokens each,
  ignore_eos) through the router, 1 replica vs 2;
- weight update: the bundled checkpoint streamed to `/update_weights` through the router
  (two-phase: stage on all, commit on all) for 1 and 2 replicas, and direct to one
  replica (one-phase), median of `--repeats`.
Usage: python bench/cluster.py [--requests 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ray
import uvicorn
from checkpoint import qwen3_small_checkpoint

from rlserve.cluster import ClusterConfig
from rlserve.cluster.replica_set import ReplicaSet
from rlserve.cluster.router_app import create_router_app
from rlserve.cluster.router_config import RouterConfig
from rlserve.config import BUNDLED_MODEL

ENGINE = {"num_blocks": 256, "max_num_seqs": 32}
NEW_TOKENS = 32


class Router:
    """A router app under uvicorn in a thread, over a started ReplicaSet."""

    def __init__(self, replicas: ReplicaSet) -> None:
        app = create_router_app(replicas, RouterConfig(port=0, log_level="WARNING"))
        self.server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def median_latency_ms(client: httpx.Client, url: str, count: int) -> float:
    body = {"prompt": "1+1=", "max_tokens": 1, "temperature": 0}
    times = []
    for _ in range(count):
        start = time.perf_counter()
        reply = client.post(url + "/v1/completions", json=body)
        times.append(time.perf_counter() - start)
        reply.raise_for_status()
    return statistics.median(times) * 1000


def throughput(url: str, requests: int) -> float:
    body = {"max_tokens": NEW_TOKENS, "ignore_eos": True, "temperature": 0}

    def one(i: int) -> int:
        reply = httpx.post(url + "/v1/completions", json={**body, "prompt": f"{i}+"}, timeout=600)
        reply.raise_for_status()
        return reply.json()["usage"]["completion_tokens"]

    with ThreadPoolExecutor(requests) as pool:
        start = time.perf_counter()
        tokens = sum(pool.map(one, range(requests)))
        return tokens / (time.perf_counter() - start)


def update_seconds(url: str, weights: bytes, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reply = httpx.post(
            url + "/update_weights",
            content=weights,
            headers={"content-type": "application/octet-stream"},
            timeout=600,
        )
        times.append(time.perf_counter() - start)
        if reply.status_code != 200:
            raise RuntimeError(f"update failed: {reply.status_code} {reply.text[:500]}")
    return statistics.median(times)


def start(num_replicas: int, model: Path) -> ReplicaSet:
    config = ClusterConfig(
        model=str(model),
        num_replicas=num_replicas,
        engine_options=dict(ENGINE),
        health_interval_s=1,
    )
    replicas = ReplicaSet(config)
    replicas.start()
    return replicas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=40)
    parser.add_argument(
        "--model",
        choices=("bundled", "small"),
        default="bundled",
        help="small: the random ~48M Qwen3 shape (bench/checkpoint.py), where a step's cost "
        "grows with the batch; the bundled model is so small that one replica's bigger batch "
        "costs almost nothing more, so replicas add little there",
    )
    args = parser.parse_args()
    model = BUNDLED_MODEL if args.model == "bundled" else qwen3_small_checkpoint()
    weights = (model / "model.safetensors").read_bytes()
    ray.init(num_cpus=3, include_dashboard=False, logging_level="warning")
    sets = {n: start(n, model) for n in (1, 2)}
    routers = {n: Router(rs) for n, rs in sets.items()}
    rows: list[tuple[str, Any]] = []
    try:
        direct = sets[1].replicas[0].url
        with httpx.Client(timeout=60) as client:
            median_latency_ms(client, routers[1].url, 5)  # warm-up
            via = median_latency_ms(client, routers[1].url, args.latency_requests)
            plain = median_latency_ms(client, direct, args.latency_requests)
        rows += [("latency direct (ms)", plain), ("latency via router (ms)", via)]
        rows.append(("router overhead (ms/request)", via - plain))
        for n, router in routers.items():
            throughput(router.url, 4)  # warm-up
            rows.append(
                (f"throughput, {n} replica(s) (tok/s)", throughput(router.url, args.requests))
            )
        rows.append(
            ("weight update direct, 1 server (s)", update_seconds(direct, weights, args.repeats))
        )
        for n, router in routers.items():
            seconds = update_seconds(router.url, weights, args.repeats)
            rows.append((f"weight update via router, {n} replica(s) (s)", seconds))
    finally:
        for router in routers.values():
            router.close()
        for rs in sets.values():
            rs.close()
        ray.shutdown()
    print(
        f"weights: {len(weights) / 2**20:.1f} MiB, {args.requests} requests x {NEW_TOKENS} tokens"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.2f}")


if __name__ == "__main__":
    main()
