"""vLLM's admin routes on rlserve, with the requests vLLM's RLHF examples and clients send
(`POST /pause?mode=...`, `/resume`, `GET /is_paused`, `/reset_prefix_cache`,
`/abort_requests` {"request_ids"}, `/v1/load_lora_adapter` {"lora_name", "lora_path"},
`/v1/unload_lora_adapter` {"lora_name"}), and rlserve's own JSON `/pause` beside them."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.support.checkpoints import save_lora
from tests.support.servers import RunningServer, admin_server, wait_until

ADMIN = "vllm-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict) -> Path:
    root = tmp_path_factory.mktemp("vllm") / "weights"
    save_lora(checkpoints["qwen3"], root / "lora")
    return root


@pytest.fixture(scope="module")
def server(make_engine, checkpoints, weights: Path):
    yield from admin_server(make_engine, checkpoints["qwen3"], weights, ADMIN)


@pytest.fixture
def http(server: RunningServer):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client
        client.post("/resume", json={})


def is_paused(http: httpx.Client) -> bool:
    return http.get("/is_paused").json()["is_paused"]


@pytest.mark.parametrize(
    ("query", "mode"),
    [
        ("?mode=keep", "keep"),
        ("?mode=wait&clear_cache=false", "wait"),
        ("?wait_for_inflight_requests=true", "wait"),
        ("?mode=abort&clear_cache=true", "abort"),
        ("", "abort"),  # vLLM's default
    ],
)
def test_vllm_pause_query_and_resume(http, query, mode) -> None:
    reply = http.post("/pause" + query)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "paused" and reply.json()["paused"] == mode
    assert http.get("/is_paused").json() == {"is_paused": True, "paused": mode}
    assert http.post("/resume").json()["status"] == "resumed"
    assert is_paused(http) is False


def test_rlserve_json_pause_keeps_its_meaning(http) -> None:
    reply = http.post("/pause", json={})
    assert reply.json()["paused"] == "keep" and "status" not in reply.json()
    assert is_paused(http) is True


def test_vllm_abort_pause_ends_a_frozen_request(server, http) -> None:
    http.post("/pause", json={"mode": "keep"})
    result: dict = {}
    body = {"prompt": [4, 9, 2], "max_tokens": 8, "temperature": 0}

    def complete() -> None:
        result.update(httpx.post(server.url + "/v1/completions", json=body, timeout=60).json())

    worker = threading.Thread(target=complete)
    worker.start()
    try:
        assert wait_until(server.engine.has_unfinished_requests, 10)
        assert http.post("/pause?mode=abort").json()["paused"] == "abort"
    finally:
        worker.join(30)
    assert result["choices"][0]["finish_reason"] == "abort"


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/pause?mode=sometimes", None),
        ("POST", "/pause?clear_cache=maybe", None),
        ("POST", "/pause?mode=keep", {"mode": "keep"}),
        ("POST", "/reset_prefix_cache?reset_external=maybe", None),
        ("POST", "/abort_requests", {}),
        ("POST", "/abort_requests", {"request_ids": "cmpl-1"}),
        ("POST", "/abort_requests", {"request_ids": [1]}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "x"}),
        ("POST", "/v1/load_lora_adapter", {"lora_path": "lora"}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "../lora"}),
        ("POST", "/v1/unload_lora_adapter", {}),
    ],
)
def test_bad_vllm_requests_are_400(http, method, url, body) -> None:
    reply = http.request(method, url, json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert is_paused(http) is False


def test_reset_prefix_cache_and_abort_requests(http) -> None:
    reply = http.post("/reset_prefix_cache?reset_running_requests=false")
    assert reply.status_code == 200 and reply.content == b""
    reply = http.post("/abort_requests", json={"request_ids": ["cmpl-unknown"]})
    assert reply.status_code == 200 and reply.json()["aborted"] == 0


def test_lora_load_and_unload(http, weights) -> None:
    body = {"lora_name": "sql-lora", "lora_path": str(weights / "lora")}
    reply = http.post("/v1/load_lora_adapter", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.text == "Success: LoRA adapter 'sql-lora' added successfully."
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert cards["sql-lora"]["root"] == body["lora_path"]  # vLLM: the path it was loaded from
    again = http.post("/v1/load_lora_adapter", json=body)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    assert (
        http.post("/v1/load_lora_adapter", json={**body, "load_inplace": True}).status_code == 200
    )
    reply = http.post("/v1/unload_lora_adapter", json={"lora_name": "sql-lora"})
    assert reply.text == "Success: LoRA adapter 'sql-lora' removed successfully."
    gone = http.post("/v1/unload_lora_adapter", json={"lora_name": "sql-lora"})
    assert gone.status_code == 404


def test_vllm_routes_need_the_admin_key(server) -> None:
    for route in ("/pause", "/resume", "/reset_prefix_cache", "/v1/load_lora_adapter"):
        assert httpx.post(server.url + route).status_code == 401
    assert httpx.get(server.url + "/is_paused").status_code == 401
