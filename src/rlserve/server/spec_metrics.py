"""Speculative decoding in /metrics: rlserve's own families and vLLM's, read from the
engine's stats snapshot at scrape time (counters from `EngineCore.stats()`'s `spec_*`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

VLLM_LABELS = ("model_name", "engine")
# stats key -> (rlserve name, vLLM name, vLLM's help text)
_COUNTERS = {
    "spec_sequence_steps": (
        "rlserve_spec_decode_num_drafts",
        "vllm:spec_decode_num_drafts",
        "Number of spec decoding drafts.",
    ),
    "spec_proposed_tokens": (
        "rlserve_spec_decode_num_draft_tokens",
        "vllm:spec_decode_num_draft_tokens",
        "Number of draft tokens.",
    ),
    "spec_accepted_tokens": (
        "rlserve_spec_decode_num_accepted_tokens",
        "vllm:spec_decode_num_accepted_tokens",
        "Number of accepted tokens.",
    ),
}


def spec_rates(stats: dict[str, Any]) -> tuple[float, float]:
    """(acceptance rate: accepted / proposed guesses, mean accepted length: tokens per
    verifying sequence step, 1 + accepted per draft as vLLM reports it); 0 before any."""
    proposed = stats.get("spec_proposed_tokens", 0)
    drafts = stats.get("spec_sequence_steps", 0)
    accepted = stats.get("spec_accepted_tokens", 0)
    return (accepted / proposed if proposed else 0.0, 1 + accepted / drafts if drafts else 0.0)


class SpecDecodeCollector:
    """The spec-decode counters under both names, and rlserve's two rate gauges."""

    def __init__(
        self, stats: Callable[[], dict[str, Any]], vllm_labels: Callable[[], list[str]]
    ) -> None:
        self._stats = stats
        self._labels = vllm_labels

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        labels = self._labels()
        for key, (name, vllm_name, doc) in _COUNTERS.items():
            value = float(stats.get(key, 0))
            yield CounterMetricFamily(name, doc, value=value)
            metric = CounterMetricFamily(vllm_name, doc, labels=VLLM_LABELS)
            metric.add_metric(labels, value)
            yield metric
        rate, length = spec_rates(stats)
        yield GaugeMetricFamily(
            "rlserve_spec_decode_acceptance_rate", "Share of speculative guesses accepted", rate
        )
        yield GaugeMetricFamily(
            "rlserve_spec_decode_mean_accepted_length",
            "Tokens per speculating sequence step (1 + accepted guesses)",
            length,
        )
