"""NexRL's weight sync against rlserve: `/update_weights` with NexRL's body (copied from
nexrl/weight_sync/weight_sync_controller.py, sync_method "network"), the `weight_path` /
`model_path` spellings of `path`, and a bf16 checkpoint cast onto the fp32 model."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import build_checkpoint
from tests.support.servers import RunningServer, admin_server

ADMIN = "nexrl-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PROBE = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """weights/B (fp32), weights/B16 (B in bf16), weights/bad16 (bf16, one wrong shape)."""
    root = tmp_path_factory.mktemp("nexrl") / "weights"
    b = build_checkpoint(root / "B", "qwen3", seed=3)
    state = load_file(str(b / "model.safetensors"))
    bf16 = {name: t.to(torch.bfloat16).contiguous() for name, t in state.items()}
    (root / "B16").mkdir()
    save_file(bf16, str(root / "B16" / "model.safetensors"))
    (root / "bad16").mkdir()
    save_file(
        {**bf16, PROBE: torch.zeros(3, dtype=torch.bfloat16)}, str(root / "bad16" / "x.safetensors")
    )
    return root


@pytest.fixture(scope="module")
def server(make_engine, checkpoints, weights: Path):
    yield from admin_server(make_engine, checkpoints["qwen3"], weights, ADMIN)


def probe(server: RunningServer) -> torch.Tensor:
    return server.engine.model.hf_weight_targets()[PROBE].detach().clone()


def post(server: RunningServer, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/update_weights", json=body, headers=AUTH, timeout=60)


def nexrl_body(weight_path: str) -> dict:
    """What NexRL's WeightSyncController posts to a vllm/sglang backend."""
    return {"model_name": "Qwen/Qwen3-test", "weight_type": "bf16", "weight_path": weight_path}


def test_nexrl_body_updates_and_casts_bf16(server, weights) -> None:
    before = httpx.get(server.url + "/policy_version", headers=AUTH).json()["policy_version"]
    reply = post(server, nexrl_body(str(weights / "B16")))
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["dtype_cast"] == {"from": ["bfloat16"], "to": ["float32"]}
    assert data["policy_version"] == before + 1
    expected = load_file(str(weights / "B16" / "model.safetensors"))[PROBE].float()
    assert torch.equal(probe(server).cpu(), expected)


def test_model_path_alias_and_same_dtype_reports_no_cast(server, weights) -> None:
    reply = post(server, {"model_path": "B"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["dtype_cast"] is None
    expected = load_file(str(weights / "B" / "model.safetensors"))[PROBE]
    assert torch.equal(probe(server).cpu(), expected)


def test_bad_bf16_checkpoint_changes_nothing(server, weights) -> None:
    post(server, {"path": "B"})
    before, version = probe(server), server.app.state.rlserve.policy_version
    reply = post(server, nexrl_body(str(weights / "bad16")))
    assert reply.status_code == 400
    assert "shape" in reply.json()["error"]["message"]
    assert torch.equal(probe(server), before)
    assert server.app.state.rlserve.policy_version == version


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model_name": "m", "weight_type": "bf16"}, "path"),
        ({"path": "B", "weight_path": "B16"}, "weight_path"),
        ({"weight_path": 7}, "weight_path"),
        ({"weight_path": "B", "model_name": ["m"]}, "model_name"),
        ({"weight_path": "B", "weight_type": 16}, "weight_type"),
        ({"weight_path": "../escape"}, "weight_path"),
    ],
)
def test_bad_nexrl_bodies_are_400(server, body, param) -> None:
    reply = post(server, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_nexrl_body_needs_the_admin_key(server, weights) -> None:
    reply = httpx.post(server.url + "/update_weights", json=nexrl_body(str(weights / "B")))
    assert reply.status_code == 401


def test_a_streamed_bf16_update_is_cast_too(server, weights) -> None:
    from rlserve.client import Client

    state = load_file(str(weights / "B" / "model.safetensors"))
    update = {PROBE: (state[PROBE] * 0.5).to(torch.bfloat16)}
    with Client(server.url, model="m", admin_key=ADMIN) as client:
        reply = client.update_weights(update)
    assert reply["dtype_cast"] == {"from": ["bfloat16"], "to": ["float32"]}
    assert torch.equal(probe(server).cpu(), update[PROBE].float())
