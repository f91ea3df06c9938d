"""Memory release over HTTP, with the calls the frameworks make: vLLM's `/sleep?level=`,
`/wake_up?tags=`, `/is_sleeping` (verl's and prime-rl's colocated vLLM servers) and
SGLang's `/release_memory_occupation` / `/resume_memory_occupation` with slime's bodies
(`{}`, then `{"tags": ["weights"]}`, `{"tags": ["kv_cache"]}`) and verl's
(`{"tags": ["kv_cache", "cuda_graph"]}`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from rlserve.server import ServerConfig
from tests.support.servers import RunningServer, wait_until

ADMIN = "memory-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
COMPLETION = {"prompt": "12+30=", "max_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(make_engine):
    engine = make_engine(kv_cache_memory=16 << 20)
    srv = RunningServer(engine, ServerConfig(admin_key=ADMIN))
    yield srv
    srv.close()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client
        client.post("/wake_up")
        client.post("/resume", json={})


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def greedy(oai: openai.OpenAI) -> str:
    body = dict(COMPLETION)
    extra = {"ignore_eos": body.pop("ignore_eos")}
    return oai.completions.create(model="rlserve-tiny", extra_body=extra, **body).choices[0].text


def sleeping(http: httpx.Client) -> bool:
    return http.get("/is_sleeping").json()["is_sleeping"]


def complete_in_background(server: RunningServer, result: dict) -> threading.Thread:
    def run() -> None:
        reply = httpx.post(server.url + "/v1/completions", json=COMPLETION, timeout=60)
        result.update(reply.json())

    worker = threading.Thread(target=run)
    worker.start()
    return worker


def test_vllm_sleep_and_staged_wake_up_give_the_same_tokens(server, http, oai) -> None:
    before = greedy(oai)
    reply = http.post("/sleep?level=1")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["is_sleeping"] is True and body["released"] == ["weights", "kv_cache"]
    assert body["kv_cache_bytes"] == 16 << 20 and body["weights_discarded"] is False
    assert server.engine.runner.kv_cache_bytes == 0
    assert http.get("/is_sleeping").json() == {"is_sleeping": True, "released": body["released"]}
    assert http.get("/is_paused").json()["is_paused"] is True
    woke = http.post("/wake_up?tags=weights").json()  # verl: weights, update, then KV
    assert woke["is_sleeping"] is True and woke["released"] == ["kv_cache"]
    woke = http.post("/wake_up", params={"tags": ["kv_cache"]}).json()
    assert woke == {**woke, "is_sleeping": False, "released": []}
    assert sleeping(http) is False and greedy(oai) == before


def test_vllm_level_2_keeps_the_weights_and_says_so(http, oai) -> None:
    before = greedy(oai)
    body = http.post("/sleep?level=2&mode=wait").json()
    assert body["level"] == 2 and body["weights_discarded"] is False
    assert "kept on host" in body["message"]
    assert http.post("/wake_up").json()["is_sleeping"] is False
    assert greedy(oai) == before


def test_vllm_level_0_only_pauses(server, http) -> None:
    body = http.post("/sleep?level=0&mode=keep").json()
    assert body == {"is_sleeping": True, "level": 0, "mode": "keep"}
    assert server.engine.runner.kv_cache_bytes > 0 and sleeping(http) is True
    assert http.post("/wake_up?tags=scheduling").json()["is_sleeping"] is False


def test_vllm_sleep_aborts_a_running_request_by_default(server, http) -> None:
    http.post("/pause", json={"mode": "keep"})  # freezes it: deterministic
    result: dict = {}
    worker = complete_in_background(server, result)
    try:
        assert wait_until(server.engine.has_unfinished_requests, 10)
        assert http.post("/sleep").status_code == 200
    finally:
        worker.join(30)
    assert result["choices"][0]["finish_reason"] == "abort"


def test_a_request_sent_while_asleep_runs_after_wake_up(server, http, oai) -> None:
    before = greedy(oai)
    http.post("/sleep")
    result: dict = {}
    worker = complete_in_background(server, result)
    try:
        assert wait_until(server.engine.has_unfinished_requests, 10)
        http.post("/resume", json={})  # an operator's resume: still nothing may run
        assert sleeping(http) is True and not result
        http.post("/wake_up")
    finally:
        worker.join(30)
    assert result["choices"][0]["text"] == before


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/sleep?level=3", "level"),
        ("/sleep?level=one", "level"),
        ("/sleep?mode=sometimes", "mode"),
        ("/wake_up?tags=kv", "tags"),
        ("/wake_up?tags=weights&tags=everything", "tags"),
    ],
)
def test_bad_vllm_input_is_400_and_changes_nothing(server, http, url, param) -> None:
    reply = http.post(url)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert sleeping(http) is False and server.engine.runner.kv_cache_bytes > 0


def test_slime_release_then_staged_resume(server, http, oai) -> None:
    before = greedy(oai)
    http.post("/flush_cache")
    reply = http.post("/release_memory_occupation", json={})
    assert reply.status_code == 200, reply.text
    assert reply.json()["success"] is True and reply.json()["released"] == ["weights", "kv_cache"]
    reply = http.post("/resume_memory_occupation", json={"tags": ["weights"]})
    assert reply.json()["released"] == ["kv_cache"]
    reply = http.post("/resume_memory_occupation", json={"tags": ["kv_cache"]})
    assert reply.json() == {**reply.json(), "success": True, "released": []}
    assert greedy(oai) == before


def test_verl_tags_and_get_requests(server, http, oai) -> None:
    before = greedy(oai)
    http.request("GET", "/release_memory_occupation", json={"tags": ["weights"]})
    reply = http.post("/release_memory_occupation", json={"tags": ["kv_cache", "cuda_graph"]})
    assert reply.json()["changed"] == ["kv_cache"]
    assert server.engine.runner.kv_cache_bytes == 0
    http.post("/resume_memory_occupation", json={"tags": ["weights"]})
    http.get("/resume_memory_occupation", params={})  # no body: all
    assert sleeping(http) is False and greedy(oai) == before


@contextmanager
def engine_held(server: RunningServer) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the engine thread at its next step until `go` is set."""
    engine, entered, go = server.engine, threading.Event(), threading.Event()
    real = engine.step

    def held():
        entered.set()
        go.wait(30)
        return real()

    engine.step = held
    try:
        yield entered, go
    finally:
        go.set()
        del engine.step


def test_sglang_release_while_a_request_runs_is_409(server, http) -> None:
    result: dict = {}
    replies: list[httpx.Response] = []
    inbox = server.app.state.rlserve.loop._inbox
    with engine_held(server) as (entered, go):
        worker = complete_in_background(server, result)
        assert entered.wait(10)
        release = threading.Thread(
            target=lambda: replies.append(http.post("/release_memory_occupation", json={}))
        )
        release.start()
        assert wait_until(lambda: inbox.qsize() > 0, 10)
        go.set()
        release.join(30)
        worker.join(30)
    assert replies[0].status_code == 409, replies[0].text
    assert replies[0].json()["success"] is False
    assert result["choices"][0]["finish_reason"] == "length"
    assert sleeping(http) is False


@pytest.mark.parametrize(
    "body",
    [{"tags": "weights"}, {"tags": ["kv"]}, {"tags": [1]}],
)
def test_bad_sglang_tags_are_400(server, http, body) -> None:
    for path in ("/release_memory_occupation", "/resume_memory_occupation"):
        reply = http.post(path, json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json()["success"] is False and reply.json()["error"]["param"] == "tags"
    assert sleeping(http) is False and server.engine.runner.kv_cache_bytes > 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sleep"),
        ("POST", "/wake_up"),
        ("GET", "/is_sleeping"),
        ("POST", "/release_memory_occupation"),
        ("POST", "/resume_memory_occupation"),
    ],
)
def test_memory_routes_need_the_admin_key(server, method, path) -> None:
    reply = httpx.request(method, server.url + path, json={}, timeout=30)
    assert reply.status_code == 401, reply.text
    assert server.engine.runner.kv_cache_bytes > 0
