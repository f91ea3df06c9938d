"""The `Cluster` Python API over the session's Ray replicas: generate spreads prompts,
keeps a session (and an n > 1 group) on one replica, retries samples a dead replica
lost, and fans admin calls out; bad input is refused naming the argument."""

from __future__ import annotations

import shutil

import pytest

from rlserve import SamplingParams
from rlserve.cluster import ClusterConfig
from rlserve.cluster.cluster import Cluster, ClusterError
from rlserve.cluster.replica_set import ReplicaSet
from rlserve.config import BUNDLED_MODEL
from tests.support.servers import free_port

LONG = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
PROMPTS = [[11, 42, 7, k] for k in range(8)]


@pytest.fixture(scope="module")
def cluster(ray_replicas):
    with Cluster.over(ray_replicas) as api:
        yield api


@pytest.fixture(scope="module")
def sessions(ray_replicas):
    with Cluster.over(ray_replicas, routing="session") as api:
        yield api


def test_generate_spreads_prompts_over_both_replicas(cluster) -> None:
    outs = cluster.generate(PROMPTS, LONG)
    assert [len(o) for o in outs] == [1] * len(PROMPTS)
    assert {o[0].replica for o in outs} == {"ray-0", "ray-1"}
    assert all(o[0].error is None and len(o[0].token_ids) == 24 for o in outs)
    assert all(r.outstanding == 0 for r in cluster.replicas.replicas)


def test_text_prompts_and_greedy_tokens_match_across_replicas(cluster) -> None:
    outs = cluster.generate(["What is 2 + 3?"] * 4, LONG)
    tokens = {tuple(o[0].token_ids) for o in outs}
    assert len(tokens) == 1 and outs[0][0].text
    assert len({o[0].replica for o in outs}) == 2  # the same answer from both replicas


def test_an_n_group_stays_on_one_replica(cluster) -> None:
    params = SamplingParams(max_tokens=8, n=4, seed=3)
    (group,) = cluster.generate([[5, 6, 7, 8]], params)
    assert len(group) == 4 and len({c.replica for c in group}) == 1
    assert len({tuple(c.token_ids) for c in group}) > 1  # distinct samples


def test_a_session_stays_on_one_replica(sessions) -> None:
    keys = [f"conversation-{k}" for k in range(8)]
    first = sessions.generate(PROMPTS, LONG, sessions=keys)
    again = sessions.generate(PROMPTS[::-1], LONG, sessions=keys[::-1])
    owners = {k: o[0].replica for k, o in zip(keys, first, strict=True)}
    assert owners == {k: o[0].replica for k, o in zip(keys[::-1], again, strict=True)}
    assert len(set(owners.values())) == 2  # eight sessions land on both replicas
    same = sessions.generate(PROMPTS, LONG, sessions=["one"] * len(PROMPTS))
    assert len({o[0].replica for o in same}) == 1


def test_samples_a_dead_replica_lost_are_retried_elsewhere(ray_replicas) -> None:
    live = ray_replicas.replica("ray-0").url
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rs = ReplicaSet(ClusterConfig(backend_urls=(live, dead)))
    rs.replicas[0].healthy = rs.replicas[1].healthy = True  # as if both had passed a probe
    with Cluster.over(rs) as api:
        outs = api.generate(PROMPTS, LONG)
    assert all(o[0].error is None and o[0].replica == "remote-0" for o in outs)
    assert rs.replicas[1].healthy is False
    assert "APIConnectionError" in (rs.replicas[1].last_error or "")


def test_no_replica_left_is_an_error_on_the_sample_not_a_loss(ray_replicas) -> None:
    rs = ReplicaSet(ClusterConfig(backend_urls=("http://127.0.0.1:9",)))
    with Cluster.over(rs) as api:
        (group,) = api.generate([[1, 2, 3]], SamplingParams(max_tokens=2, n=2))
    assert [c.error.startswith("NoReplica") for c in group] == [True, True]


def test_update_weights_and_admin_calls_fan_out(cluster, ray_weights_dir) -> None:
    shutil.copy(BUNDLED_MODEL / "model.safetensors", ray_weights_dir / "api.safetensors")
    new = cluster.update_weights("api.safetensors")
    assert new == cluster.policy_version
    outs = cluster.generate(PROMPTS[:4], LONG)
    assert {v for o in outs for v in o[0].weight_versions} == {new}
    cluster.pause("keep")
    cluster.resume()
    assert cluster.abort() == 0
    assert cluster.health()["healthy"] == 2
    with pytest.raises(ClusterError) as info:
        cluster.update_weights("missing.safetensors")
    assert info.value.status == 400 and set(info.value.body["failed"]) == {"ray-0", "ray-1"}
    assert cluster.policy_version == new


def test_a_trainers_state_dict_with_tied_tensors_updates_every_replica(cluster) -> None:
    from transformers import AutoModelForCausalLM

    trainer = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL)
    state = trainer.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    before = cluster.policy_version
    assert cluster.update_weights(state) == before + 1 == cluster.policy_version


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.generate([]), "prompts"),
        (lambda c: c.generate("text"), "prompts"),
        (lambda c: c.generate([[1, 2]], {"max_tokens": 2}), "params"),
        (lambda c: c.generate([[1, 2]], sessions=["a", "b"]), "sessions"),
        (lambda c: c.generate([[1, 2]], sessions=[3]), "sessions"),
        (lambda c: c.update_weights(123), "weights"),
        (lambda c: c.update_weights({}), "weights"),
        (lambda c: c.update_weights({"model.norm.weight": [1.0]}), "weights"),
        (lambda c: c.update_weights("x", version=True), "version"),
        (lambda c: c.load_adapter("", "lora"), "name"),
        (lambda c: c.unload_adapter(None), "name"),
        (lambda c: c.pause("later"), "mode"),
    ],
)
def test_bad_input_names_the_argument(cluster, call, field) -> None:
    before = cluster.policy_version
    with pytest.raises(ValueError) as info:
        call(cluster)
    assert info.value.field == field  # type: ignore[attr-defined]
    assert cluster.policy_version == before


def test_a_closed_cluster_refuses_calls(ray_replicas) -> None:
    api = Cluster.over(ray_replicas)
    api.close()
    api.close()  # idempotent, and the replicas keep running
    with pytest.raises(RuntimeError, match="closed"):
        api.generate([[1, 2]])
    assert len(ray_replicas.routable()) == 2
    with pytest.raises(ValueError, match="routing"):
        Cluster.over(ray_replicas, routing="random")


def test_a_cluster_of_remote_replicas_starts_serves_and_closes(rlserve_servers) -> None:
    config = ClusterConfig(backend_urls=tuple(s.url for s in rlserve_servers))
    with Cluster(config) as api:
        assert [r["dialect"] for r in api.health()["replicas"]] == ["rlserve", "rlserve"]
        outs = api.generate(PROMPTS, LONG)
        assert {o[0].replica for o in outs} == {"remote-0", "remote-1"}
        chat = api.generate([[{"role": "user", "content": "What is 2 + 3?"}]], LONG)
        assert chat[0][0].error is None and chat[0][0].text
    assert api.health()["healthy"] == 0  # closed: it owned its ReplicaSet
    with pytest.raises(ValueError, match="routing"):
        Cluster(num_replicas=1, routing="nearest")


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        ("APIConnectionError: connection refused", True),
        ("APITimeoutError: read timed out", True),
        ("APIStatusError: HTTP 503: shutting down", True),
        ("APIStatusError: HTTP 500: internal server error", False),
        ("APIStatusError: HTTP 400: prompt too long", False),
        (None, False),
    ],
)
def test_only_replica_failures_are_retried(error, retried) -> None:
    from rlserve.backends.base import Sample
    from rlserve.cluster.dispatch import replica_failed

    sample = Sample.failed(error) if error else Sample([1], [0.0], [0], "stop")
    assert replica_failed(sample) is retried
