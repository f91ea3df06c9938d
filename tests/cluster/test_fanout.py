"""Admin fan-out over real replicas: a weight update reaches every replica or none, a
restarted Ray replica comes back on the committed version, adapters load on all or none,
pause/resume broadcast, and the cluster reports one policy version (or says it has not)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch
from safetensors.torch import load_file, save, save_file

from rlserve.cluster import ClusterConfig
from rlserve.cluster.fanout import (
    VersionSplit,
    broadcast,
    load_adapter,
    policy_version,
    update_weights,
)
from rlserve.cluster.replica import Replica
from rlserve.cluster.replica_set import ReplicaSet
from rlserve.cluster.run_sync import run_sync
from rlserve.config import BUNDLED_MODEL

PROMPT = [11, 42, 7, 99, 5]
JSON = "application/json"
LORA_BODY = json.dumps({"adapter_name": "fan-lora", "adapter_path": "fan-lora"}).encode()


def version_of(url: str) -> int:
    return httpx.get(url + "/health", timeout=10).json()["policy_version"]


def greedy(url: str) -> list[int]:
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "return_token_ids": True}
    reply = httpx.post(url + "/v1/completions", json=body, timeout=60)
    return reply.json()["choices"][0]["token_ids"]


def fan(coro_fn, rs: ReplicaSet, *args):
    async def go():
        async with httpx.AsyncClient() as client:
            return await coro_fn(rs, client, *args)

    return run_sync(go())


def over(urls: list[str]) -> ReplicaSet:
    """A started set of remote replicas at `urls` (no Ray actors of its own)."""
    rs = ReplicaSet(ClusterConfig(backend_urls=tuple(urls), start_timeout_s=30))
    rs.start()
    return rs


def path_update(path: str) -> bytes:
    return json.dumps({"path": path}).encode()


@pytest.fixture(scope="module")
def files(ray_weights_dir, rlserve_servers) -> None:
    """same.safetensors (the bundled weights again) everywhere, except on the second plain
    server, where it has one tensor of the wrong shape."""
    weights = load_file(str(BUNDLED_MODEL / "model.safetensors"))
    name = next(n for n in weights if n.endswith("q_proj.weight"))
    for folder in (ray_weights_dir, rlserve_servers[0].weights_dir):
        shutil.copy(BUNDLED_MODEL / "model.safetensors", folder / "same.safetensors")
    bad = rlserve_servers[1].weights_dir / "same.safetensors"
    save_file({name: torch.zeros(3, 3)}, str(bad))


@pytest.fixture(scope="module")
def lora(ray_weights_dir, rlserve_servers) -> None:
    """A LoRA adapter of the bundled model as fan-lora/ under the Ray replicas' and the
    first plain server's weights dirs (not the second's)."""
    from tests.support.checkpoints import save_lora

    folder = save_lora(BUNDLED_MODEL, ray_weights_dir / "fan-lora")
    shutil.copytree(folder, rlserve_servers[0].weights_dir / "fan-lora")


def test_a_bad_file_on_one_replica_changes_no_replica(ray_replicas, rlserve_servers, files):
    urls = [r.url for r in ray_replicas.replicas] + [s.url for s in rlserve_servers]
    before = {url: (version_of(url), greedy(url)) for url in urls}
    rs = over(urls)
    reply = fan(update_weights, rs, path_update("same.safetensors"), JSON, {})
    assert reply.status == 400, reply.body
    assert list(reply.body["failed"]) == ["remote-3"]
    assert "shape" in reply.body["failed"]["remote-3"]
    assert "remote-3" in reply.body["error"]["message"]
    assert {url: (version_of(url), greedy(url)) for url in urls} == before
    assert rs.committed.empty()


def test_a_good_update_bumps_every_replica_once(ray_replicas, files):
    urls = [r.url for r in ray_replicas.routable()]
    before = fan(policy_version, ray_replicas)
    reply = fan(update_weights, ray_replicas, path_update("same.safetensors"), JSON, {})
    assert reply.status == 200, reply.body
    assert reply.body["policy_version"] == before + 1
    assert all(row["two_phase"] for row in reply.body["replicas"].values())
    assert [version_of(url) for url in urls] == [before + 1] * 2
    assert greedy(urls[0]) == greedy(urls[1])
    assert ray_replicas.committed.version == before + 1


def test_a_streamed_update_with_a_version(ray_replicas):
    weights = load_file(str(BUNDLED_MODEL / "model.safetensors"))
    target = fan(policy_version, ray_replicas) + 5
    query = [("version", str(target))]
    reply = fan(update_weights, ray_replicas, save(weights), "application/octet-stream", {}, query)
    assert reply.status == 200, reply.body
    assert fan(policy_version, ray_replicas) == target


def test_a_restarted_replica_comes_back_on_the_committed_version(
    ray_replicas, files, lora, wait_healthy
):
    reply = fan(update_weights, ray_replicas, path_update("same.safetensors"), JSON, {})
    assert reply.status == 200, reply.body
    loaded = fan(load_adapter, ray_replicas, "/load_adapter", LORA_BODY, JSON, {})
    assert loaded.status == 200, loaded.body
    committed = fan(policy_version, ray_replicas)
    victim = ray_replicas.replica("ray-0")
    restarts, old_url = victim.restarts, victim.url
    ray_replicas.kill("ray-0")
    assert victim not in ray_replicas.routable()
    wait_healthy(ray_replicas)
    assert victim.restarts == restarts + 1 and victim.url != old_url
    assert version_of(victim.url) == committed
    assert fan(policy_version, ray_replicas) == committed
    other = ray_replicas.replica("ray-1")
    assert greedy(victim.url) == greedy(other.url)
    assert "fan-lora" in adapter_ids(victim.url)  # the adapter was replayed too
    unload = json.dumps({"adapter_name": "fan-lora"}).encode()
    assert fan(broadcast, ray_replicas, "POST", "/unload_adapter", unload, JSON, {}).status == 200


def test_replicas_that_disagree_are_reported(ray_replicas, rlserve_servers, files):
    fan(update_weights, ray_replicas, path_update("same.safetensors"), JSON, {})
    rs = over([ray_replicas.replica("ray-0").url, rlserve_servers[0].url])
    with pytest.raises(VersionSplit) as info:
        fan(policy_version, rs)
    assert set(info.value.versions) == {"remote-0", "remote-1"}


def test_pause_and_resume_reach_every_replica(ray_replicas):
    paused = fan(broadcast, ray_replicas, "POST", "/pause", b'{"mode": "keep"}', JSON, {})
    assert paused.status == 200, paused.body
    assert paused.body["paused"] == "keep" and len(paused.body["replicas"]) == 2
    resumed = fan(broadcast, ray_replicas, "POST", "/resume", b"{}", JSON, {})
    assert resumed.status == 200 and resumed.body["paused"] is None
    for replica in ray_replicas.replicas:
        assert httpx.get(replica.url + "/policy_version").json()["paused"] is None
    vllm = fan(broadcast, ray_replicas, "POST", "/pause?mode=keep", b"", "", {})
    assert vllm.status == 200 and vllm.body["paused"] == "keep"  # not vLLM's default abort
    assert fan(broadcast, ray_replicas, "POST", "/resume", b"{}", JSON, {}).status == 200


def test_a_broadcast_that_one_replica_refuses_names_it(ray_replicas):
    reply = fan(broadcast, ray_replicas, "POST", "/pause", b'{"mode": "nope"}', JSON, {})
    assert reply.status == 400
    assert set(reply.body["failed"]) == {"ray-0", "ray-1"}


def test_no_healthy_replica_is_a_503_and_vllm_refuses_up_front():
    rs = ReplicaSet(ClusterConfig(backend_urls=("http://127.0.0.1:9",)))
    assert fan(update_weights, rs, path_update("x"), JSON, {}).status == 503
    vllm = rs.replicas[0]
    vllm.dialect, vllm.healthy = "vllm", True  # never contacted: refused before sending
    reply = fan(update_weights, rs, path_update("x"), JSON, {})
    assert reply.status == 400 and "NCCL" in reply.body["failed"]["remote-0"]
    assert isinstance(vllm, Replica)


def adapter_ids(url: str) -> set[str]:
    return {card["id"] for card in httpx.get(url + "/v1/models", timeout=10).json()["data"]}


def test_an_adapter_loads_on_every_replica_or_none(ray_replicas, rlserve_servers, lora):
    body = LORA_BODY
    urls = [r.url for r in ray_replicas.replicas] + [s.url for s in rlserve_servers]
    rs = over(urls)  # the second plain server has no fan-lora folder
    reply = fan(load_adapter, rs, "/load_adapter", body, JSON, {})
    assert reply.status == 400 and list(reply.body["failed"]) == ["remote-3"]
    assert all("fan-lora" not in adapter_ids(url) for url in urls)  # unloaded again

    loaded = fan(load_adapter, ray_replicas, "/load_adapter", body, JSON, {})
    assert loaded.status == 200, loaded.body
    assert list(ray_replicas.committed.adapters) == ["fan-lora"]
    assert all("fan-lora" in adapter_ids(r.url) for r in ray_replicas.replicas)
    unload = json.dumps({"adapter_name": "fan-lora"}).encode()
    gone = fan(broadcast, ray_replicas, "POST", "/unload_adapter", unload, JSON, {})
    assert gone.status == 200 and ray_replicas.committed.adapters == {}
    assert all("fan-lora" not in adapter_ids(r.url) for r in ray_replicas.replicas)


def as_sglang(rs: ReplicaSet, name: str) -> None:
    """Speak SGLang's dialect to replica `name`. SGLang cannot run here; rlserve serves
    SGLang's `/update_weights_from_disk` (server/sglang_routes.py), so the call is real."""
    rs.replica(name).dialect = "sglang"


def test_an_sglang_replica_gets_a_one_phase_update(rlserve_servers, files):
    url = rlserve_servers[0].url
    before = version_of(url)
    rs = over([url])
    as_sglang(rs, "remote-0")
    reply = fan(update_weights, rs, path_update("same.safetensors"), JSON, {})
    assert reply.status == 200, reply.body
    assert reply.body["replicas"]["remote-0"]["two_phase"] is False
    assert version_of(url) == before + 1


def test_an_sglang_refusal_discards_the_stages(ray_replicas, rlserve_servers, files):
    urls = [r.url for r in ray_replicas.replicas] + [rlserve_servers[1].url]
    before = [version_of(url) for url in urls]
    rs = over(urls)
    as_sglang(rs, "remote-2")  # its same.safetensors has a wrongly shaped tensor
    reply = fan(update_weights, rs, path_update("same.safetensors"), JSON, {})
    assert reply.status == 400 and list(reply.body["failed"]) == ["remote-2"]
    assert [version_of(url) for url in urls] == before
    streamed = fan(update_weights, rs, b"\0", "application/octet-stream", {})
    assert streamed.status == 400 and list(streamed.body["failed"]) == ["remote-2"]
