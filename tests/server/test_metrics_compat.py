"""`/metrics`: Prometheus text by default with vLLM's families, JSON on request."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.server.metrics import VllmMetrics
from tests.support.servers import RunningServer, wait_until

VLLM_FAMILIES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_success": "counter",
}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from Prometheus text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _scrape(server: RunningServer) -> dict[tuple[str, tuple], float]:
    return _samples(httpx.get(server.url + "/metrics").text)


def _value(samples: dict, name: str, model: str, **extra: str) -> float:
    labels = tuple(sorted({"model_name": model, "engine": "0", **extra}.items()))
    return samples[(name, labels)]


def test_default_is_prometheus_text_with_vllms_families(server: RunningServer, model) -> None:
    reply = httpx.get(server.url + "/metrics")
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    for name, kind in VLLM_FAMILIES.items():
        assert families[name].type == kind, name
        assert {s.labels["model_name"] for s in families[name].samples} == {model}
    assert "rlserve_http_requests" in families and "rlserve_kv_blocks_total" in families
    assert 0.0 <= _value(_samples(reply.text), "vllm:kv_cache_usage_perc", model) <= 1.0


@pytest.mark.parametrize(
    "headers, params, is_json",
    [
        ({"Accept": "application/json"}, {}, True),
        ({"Accept": "text/html, application/json"}, {}, True),
        ({}, {"format": "json"}, True),
        ({"Accept": "application/json"}, {"format": "prometheus"}, False),
        ({"Accept": "application/json;q=0.2, text/plain"}, {}, False),
        ({"Accept": "*/*"}, {}, False),
        ({"Accept": "application/json;q=0"}, {}, False),
        ({"Accept": "application/json;q=oops"}, {}, False),
    ],
)
def test_json_only_when_asked(server: RunningServer, headers, params, is_json: bool) -> None:
    reply = httpx.get(server.url + "/metrics", headers=headers, params=params)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json") is is_json
    if is_json:
        body = reply.json()
        assert body["max_batch_size"] == 64 and "current_policy_version" in body
    else:
        assert "vllm:num_requests_running" in reply.text


def test_prometheus_scrapers_get_text_with_vllms_names(server: RunningServer) -> None:
    """Prometheus asks for OpenMetrics first; it gets text 0.0.4 with `vllm:` names intact."""
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    reply = httpx.get(server.url + "/metrics", headers={"Accept": accept})
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {s.name for f in text_string_to_metric_families(reply.text) for s in f.samples}
    assert {"vllm:prompt_tokens_total", "vllm:time_to_first_token_seconds_bucket"} <= names


def test_token_and_prefix_cache_counters_move(server: RunningServer, oai, model) -> None:
    before = _scrape(server)
    prompt = "Count the numbers: " + " ".join(str(i) for i in range(40))
    usages = []
    for _ in range(2):  # the second run finds the prompt's blocks in the prefix cache
        reply = oai.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0)
        usages.append(reply.usage)
    prompt_sent = sum(u.prompt_tokens for u in usages)
    generated = sum(u.completion_tokens for u in usages)

    def grown(name: str) -> float:
        return _value(_scrape(server), name, model) - _value(before, name, model)

    assert wait_until(lambda: grown("vllm:generation_tokens_total") == generated)
    assert grown("vllm:prompt_tokens_total") == prompt_sent
    hits, queries = grown("vllm:prefix_cache_hits_total"), grown("vllm:prefix_cache_queries_total")
    assert 0 < hits <= queries and queries == prompt_sent
    after = _scrape(server)
    assert _value(after, "vllm:num_requests_running", model) == 0
    assert _value(after, "vllm:num_requests_waiting", model) == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _delta(tokens_per_sample: list[list[int]], reasons: list, finished: bool) -> RequestOutput:
    outputs = [
        CompletionOutput(index=i, token_ids=ids, finish_reason=reason)
        for i, (ids, reason) in enumerate(zip(tokens_per_sample, reasons, strict=True))
    ]
    return RequestOutput("r", None, [1, 2], outputs, finished=finished)


def test_request_timer_follows_vllms_rules() -> None:
    """TTFT from submission, one ITL per later delta with tokens, e2e and the finish reason
    once per sample (a sample left open by the last delta was aborted)."""
    from rlserve.server.metrics import RequestTimer

    registry = CollectorRegistry()
    metrics = VllmMetrics(registry, lambda: {}, "m")
    clock = _Clock()
    timer = RequestTimer(metrics, clock)
    clock.now = 100.5
    timer(0, _delta([[7], [8]], [None, None], False))  # first tokens of both samples
    clock.now = 100.75
    timer(0, _delta([[9], []], [None, None], False))  # sample 1 brought nothing
    clock.now = 101.0
    timer(0, _delta([[4], []], ["stop", None], True))
    timer(0, _delta([[5], []], ["stop", None], True))  # after its end: ignored

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model_name": "m", "engine": "0", **labels})

    assert sample("vllm:time_to_first_token_seconds_count") == 2
    assert sample("vllm:time_to_first_token_seconds_sum") == pytest.approx(1.0)
    assert sample("vllm:inter_token_latency_seconds_count") == 2
    assert sample("vllm:inter_token_latency_seconds_sum") == pytest.approx(0.5)
    assert sample("vllm:e2e_request_latency_seconds_count") == 2
    assert sample("vllm:e2e_request_latency_seconds_sum") == pytest.approx(2.0)
    assert sample("vllm:request_success_total", finished_reason="stop") == 1
    assert sample("vllm:request_success_total", finished_reason="abort") == 1
    metrics.serve("renamed")  # the old model's series go, the new one's come
    assert sample("vllm:request_success_total", finished_reason="stop") is None
    assert (
        registry.get_sample_value(
            "vllm:e2e_request_latency_seconds_count", {"model_name": "renamed", "engine": "0"}
        )
        == 0
    )


def test_latency_histograms_move_after_requests(server: RunningServer, oai, model) -> None:
    before = _scrape(server)
    stream = oai.completions.create(
        model=model,
        prompt="What is 1 + 1?",
        max_tokens=4,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert len([chunk for chunk in stream]) >= 4

    def grown(name: str, **labels: str) -> float:
        return _value(_scrape(server), name, model, **labels) - _value(
            before, name, model, **labels
        )

    assert wait_until(lambda: grown("vllm:e2e_request_latency_seconds_count") == 1)
    assert grown("vllm:time_to_first_token_seconds_count") == 1
    assert grown("vllm:inter_token_latency_seconds_count") >= 1
    assert grown("vllm:request_success_total", finished_reason="length") == 1
