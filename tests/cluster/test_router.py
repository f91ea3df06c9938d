"""The router over two Ray replicas of the bundled model (the session's `ray_replicas`),
driven with the real `openai` SDK and with the bodies RL clients send: requests spread,
session affinity raises one replica's prefix-cache hits, a killed replica loses no
request (retried) and comes back, a broken stream ends with the error event, /health,
/metrics, the admin fan-out and bad input."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from rlserve.cluster.router_app import create_router_app
from rlserve.cluster.router_config import RouterConfig
from tests.support.servers import wait_until


class RunningRouter:
    """`create_router_app(replica_set)` under uvicorn on a free loopback port."""

    def __init__(self, replica_set: Any, config: RouterConfig) -> None:
        self.replica_set = replica_set
        self.app = create_router_app(replica_set, config)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        )
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        if not wait_until(lambda: self.server.started, timeout=60):
            raise RuntimeError("the router did not start")
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    @property
    def state(self) -> Any:
        return self.app.state.router

    @contextlib.contextmanager
    def policy(self, name: str) -> Iterator[None]:
        """Route with policy `name` inside the block."""
        before, self.state.policy = self.state.policy, name
        try:
            yield
        finally:
            self.state.policy = before

    def counted(self, counter: str, replica: str) -> float:
        metrics = self.state.metrics
        return metrics.value(getattr(metrics, counter), replica)

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


def sample(metrics_text: str, name: str, replica: str) -> float:
    """A replica's sample from the router's aggregated Prometheus text."""
    pattern = rf'^{re.escape(name)}\{{replica="{re.escape(replica)}"[^}}]*\}} (\S+)$'
    match = re.search(pattern, metrics_text, re.MULTILINE)
    assert match, f"{name} for {replica} missing from /metrics"
    return float(match.group(1))


SYSTEM = "You are a careful calculator. " * 12  # a few KV blocks: turns can hit the cache


@pytest.fixture(scope="module")
def router(ray_replicas) -> Iterator[RunningRouter]:
    running = RunningRouter(ray_replicas, RouterConfig(port=0, max_request_bytes=64 * 1024))
    yield running
    running.close()


@pytest.fixture(scope="module")
def oai(router: RunningRouter) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def model(oai: openai.OpenAI) -> str:
    return oai.models.list().data[0].id


@pytest.fixture(autouse=True)
def settled(router: RunningRouter, ray_replicas, wait_healthy) -> Iterator[None]:
    """Each test starts and ends with both replicas routable and nothing in flight."""
    wait_healthy(ray_replicas)
    yield
    assert wait_until(lambda: all(r.outstanding == 0 for r in ray_replicas.replicas), 30)
    wait_healthy(ray_replicas)


def url_of(ray_replicas, name: str) -> str:
    url = ray_replicas.replica(name).url
    assert url is not None
    return url


def pause_directly(ray_replicas, name: str) -> None:
    """Pause one replica behind the router's back: its requests wait, deterministically."""
    reply = httpx.post(url_of(ray_replicas, name) + "/pause", json={"mode": "keep"}, timeout=30)
    assert reply.status_code == 200, reply.text


@contextlib.contextmanager
def held_stream(
    router_url: str, replica_url: str, path: str, body: dict[str, Any], headers: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """A stream through the router that least-outstanding sends to the replica at
    `replica_url` (the first by name when none is busy), held in flight there (the replica
    is paused) for the block; then resumed and read. Yields {"replica", "body"}, filled on
    exit. No timing involved: a short stream could otherwise end before the block runs."""
    assert httpx.post(replica_url + "/pause", json={"mode": "keep"}, timeout=30).status_code == 200
    streamed: dict[str, Any] = {}

    def read() -> None:
        with httpx.stream("POST", router_url + path, json=body, headers=headers, timeout=60) as s:
            streamed["replica"] = s.headers["x-rlserve-replica"]
            streamed["body"] = b"".join(s.iter_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        busy = lambda: any(r["outstanding"] for r in _rows(router_url))  # noqa: E731
        assert wait_until(busy, 30)
        yield streamed
    finally:
        httpx.post(replica_url + "/resume", json={}, timeout=30)
        reader.join(60)


def _rows(router_url: str) -> list[dict[str, Any]]:
    return httpx.get(router_url + "/health", timeout=10).json()["replicas"]


def test_openai_sdk_through_the_router_gets_the_replicas_reply(oai, model, ray_replicas):
    raw = oai.completions.with_raw_response.create(
        model=model, prompt="12+7=", max_tokens=8, temperature=0
    )
    name = raw.headers["x-rlserve-replica"]
    via_router = raw.parse()
    direct = openai.OpenAI(base_url=url_of(ray_replicas, name) + "/v1", api_key="none")
    same = direct.completions.create(model=model, prompt="12+7=", max_tokens=8, temperature=0)
    assert via_router.choices[0].text == same.choices[0].text
    assert via_router.usage.completion_tokens == same.usage.completion_tokens

    messages = [{"role": "user", "content": "What is 3+4?"}]
    greedy = {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0}
    whole = oai.chat.completions.create(**greedy)
    chunks = oai.chat.completions.create(**greedy, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content


def test_an_n_group_stays_on_one_replica(router, oai, model):
    before = {n: router.counted("requests", n) for n in ("ray-0", "ray-1")}
    raw = oai.completions.with_raw_response.create(
        model=model, prompt="4+4=", max_tokens=6, n=4, temperature=1.0, seed=3
    )
    assert len(raw.parse().choices) == 4
    name = raw.headers["x-rlserve-replica"]
    other = "ray-1" if name == "ray-0" else "ray-0"
    assert router.counted("requests", name) == before[name] + 1
    assert router.counted("requests", other) == before[other]


def test_requests_spread_over_both_replicas(router, oai, model, ray_replicas):
    before = {n: router.counted("requests", n) for n in ("ray-0", "ray-1")}
    body = {"model": model, "messages": [{"role": "user", "content": "1+1?"}], "stream": True}
    path = "/v1/chat/completions"
    with held_stream(router.url, url_of(ray_replicas, "ray-0"), path, body, {}) as streamed:
        other = oai.completions.with_raw_response.create(model=model, prompt="2+2=", max_tokens=4)
        assert other.headers["x-rlserve-replica"] == "ray-1"
    assert streamed["replica"] == "ray-0" and b"[DONE]" in streamed["body"]
    assert all(router.counted("requests", n) == before[n] + 1 for n in before)


def _hit_tokens(router: RunningRouter, replica: str) -> float:
    text = httpx.get(router.url + "/metrics", timeout=30).text
    return sample(text, "rlserve_prefix_cache_hit_tokens_total", replica)


def test_session_affinity_keeps_each_chat_on_one_replica(router, oai, model):
    from rlserve.cluster.routing_policy import ring_owner

    # Two OpenAI `user`s the ring puts on different replicas.
    users = {ring_owner(["ray-0", "ray-1"], f"user:u{i}"): f"u{i}" for i in range(50)}
    assert set(users) == {"ray-0", "ray-1"}
    chats = {name: [{"role": "system", "content": SYSTEM}] for name in users}
    with router.policy("session"):
        for turn in range(3):
            for name, user in users.items():
                chats[name].append({"role": "user", "content": f"What is {turn}+{len(user)}?"})
                hits = _hit_tokens(router, name)
                raw = oai.chat.completions.with_raw_response.create(
                    model=model, messages=chats[name], max_tokens=8, user=user
                )
                assert raw.headers["x-rlserve-replica"] == name
                reply = raw.parse().choices[0].message.content or ""
                chats[name].append({"role": "assistant", "content": reply})
                if turn:  # later turns reuse the earlier turns' KV on the same replica
                    assert _hit_tokens(router, name) > hits


def test_slime_style_generate_with_sglang_routing_header(router, ray_replicas):
    from rlserve.cluster.routing_policy import ring_owner

    # miles/slime: POST /generate {input_ids, sampling_params, return_logprob} with the
    # X-SMG-Routing-Key header the SGLang Model Gateway hashes.
    body = {"input_ids": list(range(5, 40)), "return_logprob": True}
    body["sampling_params"] = {"max_new_tokens": 4, "temperature": 0.0}
    with router.policy("session"):
        for key in ("sample-1", "sample-2", "sample-3"):
            reply = httpx.post(
                router.url + "/generate", json=body, headers={"X-SMG-Routing-Key": key}, timeout=60
            )
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-rlserve-replica"] == ring_owner(
                ["ray-0", "ray-1"], f"header:{key}"
            )
            assert len(reply.json()["meta_info"]["output_token_logprobs"]) == 4
    with router.policy("prefix"):
        owners = {
            httpx.post(router.url + "/generate", json=body, timeout=60).headers["x-rlserve-replica"]
            for _ in range(3)
        }
        assert len(owners) == 1  # one prompt head: one replica


def test_killed_replica_loses_no_request_and_comes_back(router, oai, model, ray_replicas):
    victim = ray_replicas.replica("ray-0")
    restarts = victim.restarts
    pause_directly(ray_replicas, "ray-0")  # what reaches ray-0 stays in flight there
    retries = router.counted("retries", "ray-0")

    def stream() -> tuple[str, str]:
        raw = oai.completions.with_raw_response.create(
            model=model, prompt="5+5=", max_tokens=8, stream=True
        )
        text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
        return raw.headers["x-rlserve-replica"], text

    def complete(i: int) -> str:
        return oai.completions.create(model=model, prompt=f"{i}+1=", max_tokens=8).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        streamed = pool.submit(stream)  # both idle: the tie goes to ray-0
        assert wait_until(lambda: victim.outstanding >= 1, 30)
        whole = [pool.submit(complete, i) for i in range(6)]
        ray_replicas.kill("ray-0")
        answered_by, text = streamed.result(timeout=120)
        results = [f.result(timeout=120) for f in whole]  # none raises: retried
    assert answered_by == "ray-1" and text  # had sent nothing yet: retried, not broken
    assert len(results) == 6
    assert router.counted("retries", "ray-0") > retries
    assert wait_until(lambda: victim.routable, 120), victim.describe()  # the health loop
    assert victim.restarts == restarts + 1
    again = oai.completions.with_raw_response.create(model=model, prompt="x", max_tokens=2)
    assert again.headers["x-rlserve-replica"] == "ray-0"  # back in routing, not paused


def test_started_stream_that_breaks_ends_with_an_error_event(router, oai, model, ray_replicas):
    pause_directly(ray_replicas, "ray-0")
    errors = router.counted("stream_errors", "ray-0")
    stream = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count"}], max_tokens=64, stream=True
    )
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"  # started: on the paused ray-0
    ray_replicas.kill("ray-0")
    with pytest.raises(openai.APIError, match="ray-0 failed while streaming"):
        list(chunks)
    assert router.counted("stream_errors", "ray-0") == errors + 1
    assert wait_until(lambda: ray_replicas.replica("ray-0").routable, 120)


def test_health_and_metrics_show_every_replica(router, oai, model):
    oai.completions.create(model=model, prompt="9+9=", max_tokens=4)
    health = httpx.get(router.url + "/health", timeout=30)
    assert health.status_code == 200
    rows = {r["name"]: r for r in health.json()["replicas"]}
    assert set(rows) == {"ray-0", "ray-1"} and all(r["healthy"] for r in rows.values())
    assert {"kind", "url", "outstanding", "restarts", "last_error"} <= set(rows["ray-0"])

    text = httpx.get(router.url + "/metrics", timeout=30).text
    for name in ("ray-0", "ray-1"):
        assert sample(text, "rlserve_generation_tokens_total", name) >= 0
        assert sample(text, "rlserve_router_replica_healthy", name) == 1.0
    assert text.count("# TYPE rlserve_generation_tokens_total counter") == 1
    assert "rlserve_router_requests_total" in text

    metrics = httpx.get(router.url + "/metrics?format=json", timeout=30).json()
    per = metrics["replicas"]
    generated = sum(per[n]["generated_tokens"] for n in ("ray-0", "ray-1"))
    assert metrics["total"]["generated_tokens"] == generated > 0


def test_admin_calls_reach_every_replica(router, ray_replicas):
    paused = httpx.post(router.url + "/pause", json={"mode": "keep"}, timeout=30)
    assert paused.status_code == 200, paused.text
    assert set(paused.json()["replicas"]) == {"ray-0", "ray-1"}
    for name in ("ray-0", "ray-1"):
        state = httpx.get(url_of(ray_replicas, name) + "/policy_version", timeout=30).json()
        assert state["paused"] == "keep"
    assert httpx.post(router.url + "/resume", json={}, timeout=30).status_code == 200
    for name in ("ray-0", "ray-1"):
        state = httpx.get(url_of(ray_replicas, name) + "/policy_version", timeout=30).json()
        assert state["paused"] is None
    version = httpx.get(router.url + "/policy_version", timeout=30)
    assert version.status_code == 200 and isinstance(version.json()["policy_version"], int)

    refused = httpx.post(router.url + "/update_weights_from_disk", json={"model_path": "/x"})
    assert refused.status_code == 400 and "/update_weights" in refused.json()["error"]["message"]
    bad = httpx.post(router.url + "/update_weights", json={"path": "../nowhere"}, timeout=60)
    assert bad.status_code >= 400
    assert "no replica changed" in bad.json()["error"]["message"]


def test_bad_input_gets_a_clear_error(router, oai, model):
    bad_json = httpx.post(
        router.url + "/v1/completions",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert bad_json.status_code == 400  # the replica's own answer, passed through
    assert "malformed JSON" in bad_json.json()["error"]["message"]
    assert bad_json.headers["x-rlserve-replica"] in ("ray-0", "ray-1")
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model=model, prompt="x", max_tokens=-1)
    assert err.value.status_code == 400 and "max_tokens" in str(err.value)

    unknown = httpx.post(router.url + "/v1/nothing", json={}, timeout=30)
    assert unknown.status_code == 404 and "/v1/completions" in unknown.json()["error"]["message"]
    big = httpx.post(router.url + "/v1/completions", content=b"x" * 70_000, timeout=30)
    assert big.status_code == 413 and "--max-request-bytes" in big.json()["error"]["message"]


def test_a_client_that_leaves_frees_its_request_on_the_replica(router, model, ray_replicas):
    pause_directly(ray_replicas, "ray-0")  # the request cannot finish while the client waits
    body = {"model": model, "prompt": "7+7=", "max_tokens": 8}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up
        httpx.post(router.url + "/v1/completions", json=body, timeout=httpx.Timeout(1.0))
    replica = ray_replicas.replica("ray-0")
    assert wait_until(lambda: replica.outstanding == 0, 30)
    url = url_of(ray_replicas, "ray-0")

    def engine_idle() -> bool:
        stats = httpx.get(url + "/metrics?format=json", timeout=30).json()
        return stats["num_running"] == stats["num_waiting"] == stats["queue_depth"] == 0

    try:  # still paused: only an abort empties it
        assert wait_until(engine_idle, 30), "the request was left waiting on the replica"
    finally:
        assert httpx.post(url + "/resume", json={}, timeout=30).status_code == 200
