"""ReplicaSet and ClusterConfig: bad config is refused naming the field; remote replicas
are probed, ejected when they fail and brought back by a health round; a set that cannot
start says which replica and why."""

from __future__ import annotations

import json

import httpx
import pytest

from rlserve.cluster import ClusterConfig, Replica
from rlserve.cluster.replica_set import ReplicaSet
from rlserve.cluster.run_sync import run_sync
from tests.support.servers import free_port


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "num_replicas"),
        ({"num_replicas": -1}, "num_replicas"),
        ({"num_replicas": True}, "num_replicas"),
        ({"num_replicas": 1, "routing": "random"}, "routing"),
        ({"backend_urls": "http://a:1"}, "backend_urls"),
        ({"backend_urls": ("ftp://a:1",)}, "backend_urls"),
        ({"backend_urls": ("http://a:1", "http://a:1/")}, "backend_urls"),
        ({"backend_urls": (7,)}, "backend_urls"),
        ({"num_replicas": 1, "num_cpus_per_replica": -1}, "num_cpus_per_replica"),
        ({"num_replicas": 1, "num_gpus_per_replica": float("nan")}, "num_gpus_per_replica"),
        ({"num_replicas": 1, "engine_options": {"model": "x"}}, "engine_options"),
        ({"num_replicas": 1, "engine_options": {"num_blocks": 0}}, "engine_options"),
        ({"num_replicas": 1, "engine_options": []}, "engine_options"),
        ({"num_replicas": 1, "server_options": {"port": 1}}, "server_options"),
        ({"num_replicas": 1, "model": "/no/such/checkpoint"}, "model"),
        ({"num_replicas": 1, "ray_address": ""}, "ray_address"),
        ({"num_replicas": 1, "health_interval_s": 0}, "health_interval_s"),
        ({"num_replicas": 1, "request_retries": -1}, "request_retries"),
        ({"num_replicas": 1, "start_timeout_s": float("inf")}, "start_timeout_s"),
    ],
)
def test_bad_config_names_the_field(fields, field) -> None:
    with pytest.raises(ValueError) as info:
        ClusterConfig(**fields)
    assert info.value.field == field  # type: ignore[attr-defined]
    assert field in str(info.value) or field == "num_replicas"


def test_replica_rows_and_lookups() -> None:
    rs = ReplicaSet(ClusterConfig(backend_urls=("http://127.0.0.1:9/",)))
    assert [r.name for r in rs.replicas] == ["remote-0"]
    assert rs.replicas[0].url == "http://127.0.0.1:9" and rs.routable() == []
    with pytest.raises(KeyError, match="remote-0"):
        rs.replica("ray-5")
    with pytest.raises(ValueError, match="not a Ray replica"):
        rs.kill("remote-0")
    with pytest.raises(TypeError, match="ClusterConfig"):
        ReplicaSet({"num_replicas": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        Replica("x", "local", "rlserve")


def test_a_replica_that_never_answers_fails_the_start_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rs = ReplicaSet(ClusterConfig(backend_urls=(url,), start_timeout_s=0.5))
    with pytest.raises(TimeoutError, match="remote-0.*ConnectError"):
        rs.start()


def test_remote_replicas_are_probed_ejected_and_brought_back(rlserve_servers) -> None:
    rs = ReplicaSet(ClusterConfig(backend_urls=tuple(s.url for s in rlserve_servers)))
    rs.start()
    assert [r.dialect for r in rs.replicas] == ["rlserve", "rlserve"]
    assert len(rs.routable()) == 2
    first = rs.replicas[0]
    rs.mark_unhealthy(first, "connection reset")
    assert rs.routable() == [rs.replicas[1]] and first.last_error == "connection reset"

    async def one_round() -> None:
        async with httpx.AsyncClient() as client:
            await rs.check_health(client)

    run_sync(one_round())
    assert len(rs.routable()) == 2


def test_ray_replicas_serve_on_their_own_ports(ray_replicas) -> None:
    urls = [r.url for r in ray_replicas.routable()]
    assert len(set(urls)) == 2
    for url in urls:
        assert httpx.get(url + "/health", timeout=10).json()["status"] == "healthy"
    assert [r.describe()["kind"] for r in ray_replicas.replicas] == ["ray", "ray"]


def test_the_replay_pins_the_committed_version() -> None:
    from rlserve.cluster.committed import AdminCall, CommittedState, json_call

    update = AdminCall("/update_weights", b'{"path": "w", "version": 3}', "application/json")
    adapter = json_call("/load_adapter", {"adapter_name": "a", "adapter_path": "a"})
    state = CommittedState(update, 7, {"a": adapter})
    pinned, replayed_adapter = state.replay_calls()
    assert json.loads(pinned.body) == {"path": "w", "version": 7}
    assert replayed_adapter is adapter
    streamed = AdminCall("/update_weights", b"st", "application/octet-stream", (("version", "3"),))
    (call,) = CommittedState(streamed, 9).replay_calls()
    assert call.query == (("version", "9"),) and call.body == b"st"
    assert CommittedState().empty() and CommittedState().replay_calls() == []
