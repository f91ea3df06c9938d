"""`/generate` (seed 002's fields), `/health`, `/metrics` on a real server."""

from __future__ import annotations

import httpx
import pytest

from rlserve import SamplingParams
from rlserve.client import TRAIN_KEY, Client
from tests.support.servers import TEST_MODEL, RunningServer

PROMPT = "What is 12 + 30?"


@pytest.fixture(scope="module")
def local_engine(make_engine):
    """A second, in-process engine on the same checkpoint (the server's is not shareable)."""
    return make_engine(TEST_MODEL)


def test_generate_round_trip_matches_in_process_engine(server: RunningServer, local_engine) -> None:
    body = {
        "prompt": PROMPT,
        "temperature": 1.0,
        "max_tokens": 8,
        "seed": 1234,
        "logprobs": 1,
        "policy_version": 42,
        "step_id": 1000,
        "request_id": "rollout-7",
    }
    resp = httpx.post(server.url + "/generate", json=body, timeout=60).json()
    assert (resp["request_id"], resp["policy_version"], resp["step_id"]) == ("rollout-7", 42, 1000)
    for key in ("prompt_ids", "completion_ids", "text", "logprobs", "finish_reason"):
        assert key in resp
    assert set(resp["metadata"]) == {"batch_size", "latency_ms", "current_policy_version"}
    assert resp["metadata"]["batch_size"] >= 1 and resp["metadata"]["current_policy_version"] == 0

    params = SamplingParams(temperature=1.0, max_tokens=8, seed=1234, logprobs=1)
    local = local_engine.generate([PROMPT], params)[0]
    assert resp["prompt_ids"] == local.prompt_token_ids
    assert resp["completion_ids"] == local.outputs[0].token_ids
    assert resp["text"] == local.outputs[0].text
    assert resp["logprobs"] == pytest.approx(local.outputs[0].logprobs, abs=1e-5)
    assert [len(t) for t in resp["top_logprobs"]] == [1] * len(resp["completion_ids"])


def test_generate_token_ids_and_groups(server: RunningServer) -> None:
    ids = server.app.state.rlserve.tokenizer.encode(PROMPT)
    with Client(server.url) as client:
        single = client.generate_rl(input_ids=ids, max_tokens=4, temperature=0)
        group = client.generate_rl([PROMPT, "What is 1 + 1?"], n=3, max_tokens=4, seed=9)
    assert single["prompt_ids"] == ids
    assert single[TRAIN_KEY]["response_tokens"] == single["completion_ids"]
    assert single["policy_version"] == 0  # not given: the server's current version
    results = group["results"]
    assert [(r["prompt_index"], r["sample_index"]) for r in results] == [
        (p, s) for p in range(2) for s in range(3)
    ]
    assert [r["index"] for r in results] == list(range(6))
    assert len(group[TRAIN_KEY]["samples"]) == 6
    for r in results:
        assert len(r["logprobs"]) == len(r["completion_ids"]) == len(r["weight_versions"])


def test_health_and_metrics(server: RunningServer) -> None:
    with Client(server.url) as client:
        assert client.health()["status"] == "healthy"
        assert client.health()["model_loaded"] is True
        client.generate_rl(PROMPT, max_tokens=2)
        metrics = client.metrics()
        text = client.metrics(prometheus=True)
    for key in ("current_policy_version", "queue_depth", "max_batch_size", "flush_interval_ms"):
        assert key in metrics
    assert metrics["max_batch_size"] == 64 and metrics["flush_interval_ms"] == 5.0
    for name in (
        "rlserve_http_requests_total",
        "rlserve_http_request_duration_seconds_bucket",
        "rlserve_generation_tokens_per_second",
        "rlserve_num_sequences_running",
        "rlserve_num_sequences_waiting",
        "rlserve_kv_blocks_used",
        "rlserve_prefix_cache_hit_rate",
    ):
        assert name in text, name
    assert 'endpoint="/generate",status="200"' in text
