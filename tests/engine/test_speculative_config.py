"""Speculative decoding's configuration, flag, n-gram lookup and /metrics families."""

from __future__ import annotations

import json

import pytest

from rlserve.config import BUNDLED_MODEL, EngineConfig, SpeculativeConfig
from rlserve.engine.ngram_proposer import NgramProposer, lookup
from rlserve.engine.proposer import ProposalInput
from rlserve.server.metrics import ServerMetrics

DRAFT = str(BUNDLED_MODEL / "draft")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"method": "medusa"}, "method"),
        ({"num_speculative_tokens": 2}, "method"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": 17}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": True}, "num_speculative_tokens"),
        ({"method": "ngram", "prompt_lookup_min": 3, "prompt_lookup_max": 2}, "prompt_lookup_max"),
        ({"method": "ngram", "prompt_lookup_min": 0}, "prompt_lookup_min"),
        ({"method": "ngram", "max_batch_size": 0}, "max_batch_size"),
        ({"method": "ngram", "min_acceptance": 1.5}, "min_acceptance"),
        ({"method": "ngram", "min_acceptance": float("nan")}, "min_acceptance"),
        ({"method": "ngram", "lookahead": 3}, "lookahead"),
        ({"method": "draft"}, "draft_model"),
        ({"method": "draft", "draft_model": "/no/such/folder"}, "draft_model"),
        ({"method": "draft", "model": DRAFT, "draft_model": DRAFT}, "model"),
        ({"method": "draft", "model": DRAFT, "draft_num_blocks": 0}, "draft_num_blocks"),
        ("{not json", "speculative"),
        ('["ngram"]', "speculative"),
        (4, "speculative"),
    ],
)
def test_bad_config_is_refused_naming_the_key(value, key):
    with pytest.raises(ValueError, match=key) as info:
        EngineConfig(speculative=value)
    assert info.value.field == key


def test_dict_json_and_vllm_alias_give_the_same_config():
    expected = SpeculativeConfig("draft", num_speculative_tokens=3, draft_model=DRAFT)
    given = {"method": "draft", "num_speculative_tokens": 3, "model": DRAFT}
    assert EngineConfig(speculative=given).speculative == expected
    assert EngineConfig(speculative=json.dumps(given)).speculative == expected
    assert EngineConfig(speculative=expected).speculative is expected
    assert EngineConfig().speculative is None  # off by default


def test_serve_flag_takes_vllms_json():
    from rlserve.server.cli import build_parser, config_from_args, engine_options

    spec = '{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3}'
    args = build_parser().parse_args(["--speculative-config", spec])
    options = engine_options(config_from_args(args), args)
    config = EngineConfig(**options).speculative
    assert config == SpeculativeConfig("ngram", num_speculative_tokens=5, prompt_lookup_max=3)
    args = build_parser().parse_args([])
    assert engine_options(config_from_args(args), args)["speculative"] is None


@pytest.mark.parametrize(
    ("tokens", "min_n", "max_n", "k", "expected"),
    [
        ([1, 2, 3, 4, 2, 3], 2, 3, 4, [4, 2, 3]),  # vLLM's docstring example
        ([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 1, 3, 2, [7, 1]),  # the most recent occurrence
        ([5, 6, 1, 2, 9, 7, 1, 2], 1, 2, 2, [9, 7]),  # the longest n wins
        ([5, 5, 5, 5, 5, 5], 1, 2, 3, [5, 5, 5]),  # a short loop still fills k
        ([1, 2, 3], 1, 3, 3, []),  # nothing repeats
        ([1, 2, 3, 1], 2, 3, 3, []),  # shorter than prompt_lookup_min repeats only
        ([1, 2, 1], 1, 1, 0, []),
        ([256, 1, 0, 1], 1, 1, 2, [0, 1]),  # 256's bytes hold a 1 off the token boundary
        ([1 << 20, 7, 1 << 20], 1, 1, 2, [7, 1 << 20]),
    ],
)
def test_ngram_lookup(tokens, min_n, max_n, k, expected):
    assert lookup(tokens, min_n, max_n, k) == expected


def test_ngram_proposer_caps_each_input_and_refuses_bad_bounds():
    proposer = NgramProposer(1, 4)
    inputs = [
        ProposalInput(("a", 0), [3, 4, 5, 3, 4, 5, 3], 2, max_tokens=2),
        ProposalInput(("b", 0), [9, 8, 7], 3, max_tokens=4),
    ]
    assert proposer.propose(inputs) == [[4, 5], []]
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        NgramProposer(3, 2)


def test_metrics_report_speculation_under_rlserve_and_vllm_names():
    stats = {"spec_proposed_tokens": 10, "spec_accepted_tokens": 6, "spec_sequence_steps": 4}
    text = ServerMetrics(lambda: stats, "tiny").exposition()[0].decode()
    labels = '{engine="0",model_name="tiny"}'
    for line in (
        f"vllm:spec_decode_num_drafts_total{labels} 4.0",
        f"vllm:spec_decode_num_draft_tokens_total{labels} 10.0",
        f"vllm:spec_decode_num_accepted_tokens_total{labels} 6.0",
        "rlserve_spec_decode_num_draft_tokens_total 10.0",
        "rlserve_spec_decode_num_accepted_tokens_total 6.0",
        "rlserve_spec_decode_acceptance_rate 0.6",
        "rlserve_spec_decode_mean_accepted_length 2.5",
    ):
        assert line in text.splitlines()
    idle = ServerMetrics(dict, "tiny").exposition()[0].decode()
    assert "rlserve_spec_decode_acceptance_rate 0.0" in idle.splitlines()
