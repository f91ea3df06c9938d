"""Many concurrent clients of mixed requests against a real server: does anything get lost?

Starts `rlserve serve` in a subprocess on a free loopback port (bundled model unless
`--model`), or uses `--url` of a running server, then runs `--clients` concurrent clients
that share `--requests` requests of these kinds (a fixed, seeded mix):

    completion, chat               plain JSON requests
    completion_stream, chat_stream SSE, with usage in the last chunk
    n4                             /v1/completions with n=4
    generate                       rlserve's /generate with logprobs
    bad                            an invalid request: must get a 4xx in the OpenAI shape
    disconnect                     a stream the client drops after its first chunk

and prints completed requests, errors by status, lost requests (no answer, a broken
connection or stream, a 200 without a finish_reason, a bad request not refused),
p50 / p99 latency, generated tokens per second and the KV blocks still in use once the
server is idle. Exits 1 if anything was lost or KV blocks stayed in use.

    .venv/bin/python bench/load.py            # 256 clients, 1024 requests
    .venv/bin/python bench/load.py --quick    # 32 clients, 128 requests
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import serving

MIX = {  # kind -> weight
    "completion": 3,
    "chat": 3,
    "completion_stream": 2,
    "chat_stream": 2,
    "n4": 1,
    "generate": 2,
    "bad": 1,
    "disconnect": 1,
}
BAD_BODIES: list[tuple[str, Any]] = [
    ("/v1/completions", {"prompt": "hi", "temperature": -1}),
    ("/v1/completions", {"prompt": "hi", "model": "no-such-model"}),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": '),
    ("/generate", {"prompt": "hi " * 3000}),
    ("/v1/completions", {"prompt": [10**9]}),
]


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no HTTP answer at all
    seconds: float
    tokens: int = 0
    lost: str | None = None  # why the request counts as lost, if it does


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    flags = [
        "--max-batch",
        str(args.max_batch),
        "--max-tokens",
        str(args.max_tokens),
        "--max-queue",
        str(args.clients * 4),  # every client's sequences may wait
        "--log-level",
        "warning",
    ]
    return serving.start_server(flags, args.model, port)


# --- one request of each kind ----------------------------------------------------------------


def prompt(i: int) -> str:
    return f"What is {i % 50} + {i % 7}?"


def sampling(i: int, max_tokens: int) -> dict[str, Any]:
    return {"max_tokens": max_tokens, "temperature": 1.0, "seed": i}


def finish_reasons(choices: list[dict[str, Any]]) -> list[Any]:
    return [c.get("finish_reason") for c in choices]


async def plain(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], choices: int
) -> tuple[int, int, str | None]:
    """(status, completion tokens, why lost) of a JSON request."""
    resp = await client.post(path, json=body)
    if resp.status_code != 200:
        return resp.status_code, 0, None
    data = resp.json()
    if path == "/generate":
        items = data.get("results") or [data]
        done = all(item.get("finish_reason") for item in items)
        return (
            200,
            sum(len(item["completion_ids"]) for item in items),
            (None if done else "200 without finish_reason"),
        )
    reasons = finish_reasons(data["choices"])
    if len(reasons) != choices or not all(reasons):
        return 200, 0, f"200 with finish reasons {reasons}"
    return 200, int(data["usage"]["completion_tokens"]), None


async def streamed(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> tuple[int, int, str | None]:
    """(status, completion tokens, why lost) of an SSE request read to `[DONE]`."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", path, json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return resp.status_code, 0, None
        tokens, finished, done = 0, False, False
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                return 200, tokens, f"error event in the stream: {chunk['error']}"
            finished = finished or any(finish_reasons(chunk.get("choices", [])))
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    if not done:
        return 200, tokens, "stream ended without [DONE]"
    return 200, tokens, None if finished else "stream without a finish_reason"


async def dropped(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> tuple[int, int, str | None]:
    """Open a stream and leave after its first chunk (the server must free its KV)."""
    async with client.stream("POST", path, json={**body, "stream": True}) as resp:
        async for _ in resp.aiter_lines():
            break
        return resp.status_code, 0, None


async def refused(client: httpx.AsyncClient, i: int) -> tuple[int, int, str | None]:
    path, body = BAD_BODIES[i % len(BAD_BODIES)]
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = await client.post(path, **kwargs)
    if not 400 <= resp.status_code < 500:
        return resp.status_code, 0, f"bad request answered {resp.status_code}"
    error = resp.json().get("error", {})
    if set(error) != {"message", "type", "param", "code"}:
        return resp.status_code, 0, f"error not in the OpenAI shape: {resp.text[:200]}"
    return resp.status_code, 0, None


def request_for(
    kind: str, i: int, max_tokens: int
) -> Callable[[httpx.AsyncClient], Awaitable[tuple[int, int, str | None]]]:
    completion = {"prompt": prompt(i), **sampling(i, max_tokens)}
    chat = {"messages": [{"role": "user", "content": prompt(i)}], **sampling(i, max_tokens)}
    table: dict[str, Callable[[httpx.AsyncClient], Awaitable[tuple[int, int, str | None]]]] = {
        "completion": lambda c: plain(c, "/v1/completions", completion, 1),
        "chat": lambda c: plain(c, "/v1/chat/completions", chat, 1),
        "completion_stream": lambda c: streamed(c, "/v1/completions", completion),
        "chat_stream": lambda c: streamed(c, "/v1/chat/completions", chat),
        "n4": lambda c: plain(c, "/v1/completions", {**completion, "n": 4}, 4),
        "generate": lambda c: plain(c, "/generate", {**completion, "logprobs": 1}, 1),
        "bad": lambda c: refused(c, i),
        "disconnect": lambda c: dropped(c, "/v1/completions", {**completion, "n": 2}),
    }
    return table[kind]


async def run_one(client: httpx.AsyncClient, kind: str, i: int, max_tokens: int) -> Outcome:
    start = time.perf_counter()
    try:
        status, tokens, lost = await request_for(kind, i, max_tokens)(client)
    except httpx.TimeoutException:
        return Outcome(kind, None, time.perf_counter() - start, lost="no answer (timeout)")
    except (httpx.TransportError, json.JSONDecodeError, KeyError) as exc:
        return Outcome(kind, None, time.perf_counter() - start, lost=f"broken: {exc!r}")
    return Outcome(kind, status, time.perf_counter() - start, tokens, lost)


# --- the run ---------------------------------------------------------------------------------


def planned_kinds(requests: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX.items(), strict=True)
    return rng.choices(kinds, weights=weights, k=requests)


async def load(url: str, args: argparse.Namespace) -> tuple[list[Outcome], float]:
    plan = list(enumerate(planned_kinds(args.requests, args.seed)))
    outcomes: list[Outcome] = []
    # Idle connections expire on our side before the server's 5 s keep-alive closes them:
    # with equal timeouts a request can go out on a connection the server is closing.
    limits = httpx.Limits(
        max_connections=args.clients, max_keepalive_connections=args.clients, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:

        async def worker() -> None:
            while plan:
                i, kind = plan.pop()
                outcomes.append(await run_one(client, kind, i, args.max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        return outcomes, time.perf_counter() - start


def kv_blocks_after(url: str, settle_s: float = 30.0) -> tuple[int, int]:
    """(KV blocks in use, running + waiting requests) once the server has settled."""
    deadline = time.monotonic() + settle_s
    while True:
        metrics = httpx.get(url + "/metrics", timeout=10).json()
        used = int(metrics.get("kv_blocks_used", 0))
        busy = int(metrics.get("num_running", 0)) + int(metrics.get("num_waiting", 0))
        if (used == 0 and busy == 0) or time.monotonic() > deadline:
            return used, busy
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(outcomes: list[Outcome], seconds: float, kv_used: int, busy: int) -> bool:
    """Print the figures; True when nothing was lost and the KV cache came back empty."""
    lost = [o for o in outcomes if o.lost]
    answered = [o for o in outcomes if o.status is not None and not o.lost]
    completed = [o for o in answered if o.status == 200 and o.kind not in ("bad", "disconnect")]
    errors = Counter(o.status for o in answered if o.status != 200 and o.kind != "bad")
    refused = Counter(o.status for o in answered if o.kind == "bad")
    latencies = [o.seconds * 1000.0 for o in completed]
    tokens = sum(o.tokens for o in completed)
    mix = dict(Counter(o.kind for o in outcomes))
    print(f"requests: {len(outcomes)} in {seconds:.1f} s  mix: {mix}")
    print(f"completed: {len(completed)}")
    print(f"bad requests refused (expected): {dict(refused)}")
    print(f"disconnects: {sum(o.kind == 'disconnect' for o in outcomes)}")
    print(f"errors by status (unexpected): {dict(errors) or 0}")
    print(f"lost: {len(lost)}")
    for reason, count in Counter(f"{o.kind}: {o.lost}" for o in lost).most_common(10):
        print(f"  {count} x {reason}")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"latency p50: {p50:.0f} ms  p99: {p99:.0f} ms")
    print(f"generated tokens/s: {tokens / seconds:.0f}  ({tokens} tokens)")
    print(f"KV blocks in use after: {kv_used}  (requests still in the engine: {busy})")
    return not lost and not errors and kv_used == 0 and busy == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (default: start one)")
    p.add_argument("--model", help="checkpoint folder for the started server (default: bundled)")
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--requests", type=int, help="total requests (default: 4 per client)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=64, help="the started server's --max-batch")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--quick", action="store_true", help="32 clients, 128 requests, 8 tokens")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.max_tokens = min(args.clients, 32), min(args.max_tokens, 8)
    args.requests = args.requests or args.clients * 4
    server = None
    url = args.url
    if url is None:
        port = serving.free_port()
        server = start_server(args, port)
        url = f"http://127.0.0.1:{port}"
    try:
        outcomes, seconds = asyncio.run(load(url.rstrip("/"), args))
        kv_used, busy = kv_blocks_after(url.rstrip("/"))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    print(f"server: {url}  clients: {args.clients}  max tokens: {args.max_tokens}")
    return 0 if report(outcomes, seconds, kv_used, busy) else 1


if __name__ == "__main__":
    raise SystemExit(main())
