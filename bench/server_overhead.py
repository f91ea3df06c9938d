"""What the HTTP server costs over calling the Engine in-process.

Starts `rlserve serve` in a subprocess on a free loopback port and loads the same model
in this process, then measures on identical workloads (greedy or seeded, so both sides
produce the same tokens):

1. latency of one short `/generate` vs `Engine.generate` (median of `--repeats`);
2. throughput of `--concurrency` concurrent clients (rlserve.client.AsyncClient) vs one
   `Engine.generate` call over the same `--requests` prompts.

    .venv/bin/python bench/server_overhead.py            # bundled model
    .venv/bin/python bench/server_overhead.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import serving
import torch

from rlserve import Engine, SamplingParams
from rlserve.client import AsyncClient

SHORT_PROMPT = "What is 12 + 30?"
T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    requests: int
    concurrency: int
    max_tokens: int

    def prompts(self) -> list[str]:
        return [f"What is {i} + {i % 7}?" for i in range(self.requests)]

    def params(self) -> SamplingParams:
        return SamplingParams(temperature=1.0, seed=0, max_tokens=self.max_tokens, ignore_eos=True)


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    flags = [
        "--max-batch",
        str(args.concurrency),
        "--flush-interval-ms",
        str(args.flush_interval_ms),
        "--max-tokens",
        "512",
        "--log-level",
        "warning",
    ]
    return serving.start_server(flags, args.model, port)


def in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a worker thread, as the server runs its engine.

    Why: under CPU contention torch's OpenMP pool is far slower when driven from the main
    thread than from a worker thread, which would make the in-process side look slow.
    """
    box: list[T] = []
    worker = threading.Thread(target=lambda: box.append(fn()))
    worker.start()
    worker.join()
    return box[0]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def latency(engine: Engine, url: str, repeats: int) -> tuple[float, float]:
    params = SamplingParams(temperature=0.0, max_tokens=8)
    body = {"prompt": SHORT_PROMPT, "temperature": 0.0, "max_tokens": 8}
    with httpx.Client(timeout=60) as http:
        local = in_thread(
            lambda: median_ms(lambda: engine.generate([SHORT_PROMPT], params), repeats)
        )
        remote = median_ms(
            lambda: http.post(url + "/generate", json=body).raise_for_status(), repeats
        )
    return local, remote


def local_throughput(engine: Engine, work: Workload) -> tuple[float, int]:
    engine.reset_prefix_cache()
    start = time.perf_counter()
    outs = engine.generate(work.prompts(), work.params())
    seconds = time.perf_counter() - start
    return seconds, sum(len(o.outputs[0].token_ids) for o in outs)


async def _http_throughput(url: str, work: Workload) -> tuple[float, int]:
    prompts = work.prompts()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    tokens = 0

    async def worker(client: AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            prompt = queue.get_nowait()
            resp = await client.generate_rl(
                prompt, temperature=1.0, seed=0, max_tokens=work.max_tokens, ignore_eos=True
            )
            tokens += len(resp["completion_ids"])

    async with AsyncClient(url, max_retries=0) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(work.concurrency)))
        return time.perf_counter() - start, tokens


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("measurement", "in-process", "HTTP", "difference")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument(
        "--flush-interval-ms",
        type=float,
        default=0.0,
        help="server batching window (0 measures pure HTTP overhead)",
    )
    p.add_argument("--quick", action="store_true", help="a small run (~1/4 of the work)")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.repeats = max(args.concurrency, args.requests // 4), 10
    work = Workload(args.requests, args.concurrency, args.max_tokens)
    port = serving.free_port()
    server = start_server(args, port)
    url = f"http://127.0.0.1:{port}"
    try:
        engine = Engine(args.model, max_num_seqs=args.concurrency)
        local_ms, http_ms = latency(engine, url, args.repeats)
        local_s, local_tokens = in_thread(lambda: local_throughput(engine, work))
        http_s, http_tokens = asyncio.run(_http_throughput(url, work))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert local_tokens == http_tokens, (local_tokens, http_tokens)
    local_tps, http_tps = local_tokens / local_s, http_tokens / http_s
    print(
        f"model: {engine.model_path}  torch threads: {torch.get_num_threads()}  "
        f"flush interval: {args.flush_interval_ms} ms"
    )
    print(
        f"workload: {work.requests} requests x {work.max_tokens} tokens, "
        f"{work.concurrency} concurrent clients\n"
    )
    print_table(
        [
            (
                "one short /generate (8 tokens), median ms",
                f"{local_ms:.1f}",
                f"{http_ms:.1f}",
                f"+{http_ms - local_ms:.1f} ms",
            ),
            (
                f"throughput, {work.concurrency} clients, tokens/s",
                f"{local_tps:.0f}",
                f"{http_tps:.0f}",
                f"{(http_tps / local_tps - 1) * 100:+.1f} %",
            ),
            (
                "throughput, requests/s",
                f"{work.requests / local_s:.1f}",
                f"{work.requests / http_s:.1f}",
                "",
            ),
        ]
    )


if __name__ == "__main__":
    main()
