"""SGLang's admin routes on rlserve, driven with the bodies SGLang clients send: AReaL's
SGLang backend (`/update_weights_from_disk` {"model_path", "abort_all_requests": true}),
slime's (`/abort_request` {"abort_all": true}, `/flush_cache`, `/pause_generation`,
`/continue_generation`) and SGLang's own io_struct defaults."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.support.checkpoints import build_checkpoint, save_lora
from tests.support.servers import RunningServer, admin_server, wait_until

ADMIN = "sglang-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sglang") / "weights"
    save_lora(build_checkpoint(root / "B", "qwen3", seed=5), root / "lora")
    return root


@pytest.fixture(scope="module")
def server(make_engine, checkpoints, weights: Path):
    yield from admin_server(make_engine, checkpoints["qwen3"], weights, ADMIN)


@pytest.fixture
def http(server: RunningServer):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


def paused(server: RunningServer) -> str | None:
    return server.app.state.rlserve.paused


def test_update_weights_from_disk_areal_body(server, http, weights) -> None:
    version = server.app.state.rlserve.policy_version
    body = {"model_path": str(weights / "B"), "abort_all_requests": True}
    reply = http.post("/update_weights_from_disk", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["success"] is True and data["num_paused_requests"] == 0
    assert data["message"].startswith("Succeeded to update model weights")
    assert data["policy_version"] == version + 1


def test_weight_version_label_round_trips(http) -> None:
    body = {"model_path": "B", "weight_version": "step-3", "flush_cache": False}
    assert http.post("/update_weights_from_disk", json=body).json()["weight_version"] == "step-3"
    assert http.get("/get_weight_version").json() == {"weight_version": "step-3"}
    assert http.get("/get_model_info").json()["weight_version"] == "step-3"
    reply = http.post(
        "/update_weight_version", json={"new_version": "run-0001", "abort_all_requests": True}
    )
    assert reply.json() == {
        "success": True,
        "message": "Weight version updated to run-0001",
        "new_version": "run-0001",
    }
    assert http.get("/get_weight_version").json()["weight_version"] == "run-0001"


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/update_weights_from_disk", {}, "model_path"),
        ("/update_weights_from_disk", {"model_path": "missing"}, "model_path"),
        ("/update_weights_from_disk", {"model_path": "B", "abort_all_requests": "x"}, None),
        ("/update_weights_from_disk", {"model_path": "B", "weight_version": 3}, None),
        ("/update_weight_version", {}, "new_version"),
        ("/update_weight_version", {"new_version": ""}, "new_version"),
    ],
)
def test_refusals_carry_success_false(http, route, body, param) -> None:
    version = http.get("/get_model_info").json()["policy_version"]
    reply = http.post(route, json=body)
    assert reply.status_code == 400, reply.text
    data = reply.json()
    assert data["success"] is False and data["message"] == data["error"]["message"]
    if param:
        assert data["error"]["param"] == param
    assert http.get("/get_model_info").json()["policy_version"] == version


@pytest.mark.parametrize(
    ("mode", "engine_mode"), [("abort", "abort"), ("in_place", "keep"), ("retract", "keep")]
)
def test_pause_modes_map_onto_pause_mode(server, http, mode, engine_mode) -> None:
    reply = http.post("/pause_generation", json={"mode": mode})
    assert reply.json()["message"] == "Generation paused successfully."
    assert paused(server) == engine_mode
    reply = http.post("/continue_generation", json={})
    assert reply.json() == {
        "message": "Generation continued successfully.",
        "status": "ok",
        "paused": None,
        "policy_version": server.app.state.rlserve.policy_version,
    }
    assert paused(server) is None


def test_pause_without_body_is_sglang_default_abort(server, http) -> None:
    assert http.post("/pause_generation").status_code == 200
    assert paused(server) == "abort"
    http.post("/continue_generation")


def test_abort_all_ends_a_queued_request(server, http) -> None:
    http.post("/pause_generation", json={"mode": "in_place"})
    result: dict = {}
    body = {"prompt": [5, 6, 7], "max_tokens": 8, "temperature": 0}
    worker = threading.Thread(
        target=lambda: result.update(
            httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        )
    )
    worker.start()
    try:
        assert wait_until(server.engine.has_unfinished_requests, 10)
        reply = http.post("/abort_request", json={"abort_all": True})
        assert reply.status_code == 200 and reply.json()["aborted"] == 1
    finally:
        worker.join(30)
        http.post("/continue_generation")
    assert result["choices"][0]["finish_reason"] == "abort"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/pause_generation", {"mode": "sometimes"}),
        ("/pause_generation", {"mode": ["abort"]}),
        ("/continue_generation", {"torch_empty_cache": "maybe"}),
        ("/abort_request", {}),
        ("/abort_request", {"rid": 5}),
        ("/abort_request", {"abort_all": "yes please"}),
    ],
)
def test_bad_control_bodies_are_400(server, http, route, body) -> None:
    reply = http.post(route, json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert paused(server) is None


def test_flush_cache_and_info(server, http) -> None:
    for method in ("GET", "POST"):
        reply = http.request(method, "/flush_cache")
        assert reply.status_code == 200 and reply.text.startswith("Cache flushed.")
    info = http.get("/get_server_info").json()
    assert info["model_path"] == server.app.state.rlserve.model_path
    assert info["context_length"] == server.app.state.rlserve.max_model_len
    assert info["version"] and isinstance(info["internal_states"], list)
    assert http.get("/get_model_info").json()["is_generation"] is True


def test_sglang_routes_need_the_admin_key(server) -> None:
    routes = ("/pause_generation", "/update_weights_from_disk", "/abort_request")
    for route in (*routes, "/load_lora_adapter", "/unload_lora_adapter"):
        assert httpx.post(server.url + route, json={}).status_code == 401
    assert httpx.get(server.url + "/get_server_info").status_code == 401


def test_lora_load_and_unload_slime_body(http, weights) -> None:
    """The body of SGLang's `LoadLoRAAdapterReqInput` (what slime and verl post)."""
    body = {"lora_name": "policy-lora", "lora_path": str(weights / "lora"), "pinned": False}
    reply = http.post("/load_lora_adapter", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "success": True,
        "error_message": None,
        "loaded_adapters": {"policy-lora": body["lora_path"]},
    }
    models = [card["id"] for card in http.get("/v1/models").json()["data"]]
    assert "policy-lora" in models
    again = http.post("/load_lora_adapter", json=body)
    assert again.status_code == 400 and again.json()["success"] is False
    gone = http.post("/unload_lora_adapter", json={"lora_name": "policy-lora"})
    assert gone.status_code == 200 and gone.json()["loaded_adapters"] == {}
    missing = http.post("/unload_lora_adapter", json={"lora_name": "policy-lora"})
    assert missing.status_code == 404 and missing.json()["success"] is False


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/load_lora_adapter", {"lora_path": "lora"}, "lora_name"),
        ("/load_lora_adapter", {"lora_name": "x"}, "lora_path"),
        ("/load_lora_adapter", {"lora_name": "x", "lora_path": "../lora"}, "lora_path"),
        ("/load_lora_adapter", {"lora_name": "x", "lora_path": "lora", "pinned": "y"}, "pinned"),
        ("/unload_lora_adapter", {}, "lora_name"),
    ],
)
def test_bad_lora_bodies_are_refused(http, route, body, param) -> None:
    reply = http.post(route, json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["success"] is False and reply.json()["error"]["param"] == param
