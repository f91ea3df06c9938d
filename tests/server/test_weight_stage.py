"""Two-phase weight updates over HTTP: /stage_weights checks and holds, /commit_weights
installs (as /update_weights would), /discard_weights drops; bad input changes nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save, save_file

from rlserve.server import ServerConfig
from tests.support.checkpoints import build_checkpoint
from tests.support.servers import RunningServer

ADMIN = "stage-admin"
PROMPT = [11, 42, 7, 99, 5]
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, checkpoints: dict) -> dict[str, Path]:
    """weights/ holds checkpoint B and a file with one tensor of the wrong shape."""
    weights = tmp_path_factory.mktemp("stage") / "weights"
    weights.mkdir()
    b = build_checkpoint(weights / "B", "qwen3", seed=1)
    state = load_file(str(b / "model.safetensors"))
    name = next(n for n in state if n.endswith("q_proj.weight"))
    save_file({name: torch.zeros(3, 3)}, str(weights / "bad.safetensors"))
    return {"A": checkpoints["qwen3"], "B": b, "weights": weights}


@pytest.fixture(scope="module")
def server(make_engine, dirs):
    engine = make_engine(dirs["A"], num_blocks=64, block_size=8)
    config = ServerConfig(max_tokens=16, admin_key=ADMIN, weights_dir=str(dirs["weights"]))
    running = RunningServer(engine, config)
    yield running
    running.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


def greedy(http: httpx.Client) -> list[int]:
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "return_token_ids": True}
    reply = http.post("/v1/completions", json=body)
    return reply.json()["choices"][0]["token_ids"]


def version(http: httpx.Client) -> int:
    return http.get("/health").json()["policy_version"]


def stage_path(http: httpx.Client, path: str, **extra) -> httpx.Response:
    return http.post("/stage_weights", json={"path": path, **extra})


def stage_body(http: httpx.Client, folder: Path) -> httpx.Response:
    data = save(load_file(str(folder / "model.safetensors")))
    headers = {"Content-Type": "application/octet-stream"}
    return http.post("/stage_weights", content=data, headers=headers)


def commit(http: httpx.Client, stage_id: str) -> httpx.Response:
    return http.post("/commit_weights", json={"stage_id": stage_id})


def test_stage_installs_nothing_until_commit(http, dirs) -> None:
    before, tokens_a = version(http), greedy(http)
    staged = stage_path(http, "B/model.safetensors")
    assert staged.status_code == 200, staged.text
    assert staged.json()["num_tensors"] > 0
    assert version(http) == before and greedy(http) == tokens_a
    committed = commit(http, staged.json()["stage_id"])
    assert committed.status_code == 200, committed.text
    assert committed.json()["policy_version"] == before + 1 == version(http)
    assert greedy(http) != tokens_a
    back = stage_body(http, dirs["A"])  # a streamed body, back to A
    assert commit(http, back.json()["stage_id"]).status_code == 200
    assert greedy(http) == tokens_a


def test_a_streamed_stage_keeps_its_own_copy(http, dirs) -> None:
    """The receive buffer is reused by the next streamed update: the stage must not be a
    view of it."""
    tokens_a = greedy(http)
    staged = stage_body(http, dirs["A"]).json()["stage_id"]
    data = save(load_file(str(dirs["B"] / "model.safetensors")))
    headers = {"Content-Type": "application/octet-stream"}
    assert http.post("/update_weights", content=data, headers=headers).status_code == 200
    assert greedy(http) != tokens_a
    assert commit(http, staged).status_code == 200
    assert greedy(http) == tokens_a


def test_a_bad_file_is_refused_at_stage_and_changes_nothing(http, dirs) -> None:
    assert commit(http, stage_body(http, dirs["A"]).json()["stage_id"]).status_code == 200
    before, tokens = version(http), greedy(http)
    good = stage_path(http, "B/model.safetensors").json()["stage_id"]
    bad = stage_path(http, "bad.safetensors")
    assert bad.status_code == 400
    assert "shape" in bad.json()["error"]["message"]
    assert commit(http, good).status_code == 200  # a refused stage replaced nothing
    assert version(http) == before + 1
    assert greedy(http) != tokens  # B's weights, committed despite the refused stage


def test_discard_and_replace(http) -> None:
    before = version(http)
    first = stage_path(http, "B/model.safetensors").json()["stage_id"]
    second = stage_path(http, "B/model.safetensors").json()["stage_id"]
    refused = commit(http, first)
    assert refused.status_code == 409 and second in refused.json()["error"]["message"]
    dropped = http.post("/discard_weights", json={"stage_id": second})
    assert dropped.json()["discarded"] is True
    assert commit(http, second).status_code == 409
    again = http.post("/discard_weights", json={"stage_id": second})
    assert again.status_code == 200 and again.json()["discarded"] is False
    assert version(http) == before


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/commit_weights", {}, 400, "stage_id"),
        ("/commit_weights", {"stage_id": 7}, 400, "stage_id"),
        ("/discard_weights", {"stage_id": ""}, 400, "stage_id"),
        ("/stage_weights", {}, 400, "path"),
        ("/stage_weights", {"path": "B/model.safetensors", "version": 0}, 400, "version"),
        ("/stage_weights", {"path": "../outside"}, 400, "path"),
        ("/stage_weights", {"update_info": {}}, 400, None),
    ],
)
def test_bad_input_is_refused_naming_the_field(http, path, body, status, param) -> None:
    before = version(http)
    reply = http.post(path, json=body)
    assert reply.status_code == status, reply.text
    if param is not None:
        assert reply.json()["error"]["param"] == param
    assert version(http) == before


def test_the_admin_key_is_required(server) -> None:
    reply = httpx.post(server.url + "/stage_weights", json={"path": "B/model.safetensors"})
    assert reply.status_code == 401
