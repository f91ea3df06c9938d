"""Server pieces that need no model: config, CLI flags, logprob shapes, request models."""

from __future__ import annotations

import pytest

from rlserve.server.cli import build_parser, config_from_args, main
from rlserve.server.config import ServerConfig
from rlserve.server.errors import APIError, error_body
from rlserve.server.logprob_format import (
    FLOOR,
    chat_logprobs,
    completion_logprobs,
    prompt_logprobs_entries,
)
from rlserve.server.protocol import GenerateRequest
from rlserve.server.sampling import build_params

TEXT = {1: "a", 2: "bc", 3: "d"}.__getitem__


def test_server_config_validation() -> None:
    config = ServerConfig()
    assert config.host == "127.0.0.1" and config.flush_interval_s == pytest.approx(0.01)
    for bad in (
        {"max_batch": 0},
        {"port": 70000},
        {"flush_interval_ms": -1},
        {"log_level": "LOUD"},
        {"max_tokens": True},
        {"api_key": ""},
        {"tool_call_parser": "nope"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerConfig(**bad)


def test_error_types_of_unlisted_statuses() -> None:
    assert error_body(418, "x")["error"]["type"] == "invalid_request_error"
    assert error_body(502, "x")["error"]["type"] == "server_error"


def test_cli_flags_map_onto_config() -> None:
    args = build_parser().parse_args(
        [
            "--max-batch",
            "5",
            "--flush-interval-ms",
            "10",
            "--max-tokens",
            "128",
            "--port",
            "9000",
            "--api-key",
            "k",
            "--log-level",
            "debug",
            "--trust-remote-code",
        ]
    )
    config = config_from_args(args)
    assert (config.max_batch, config.flush_interval_ms, config.max_tokens) == (5, 10.0, 128)
    assert (config.host, config.port, config.api_key) == ("127.0.0.1", 9000, "k")
    assert config.log_level == "DEBUG" and config.trust_remote_code


def test_cli_rejects_bad_flags_and_missing_model() -> None:
    with pytest.raises(SystemExit):
        main(["--max-batch", "0"])
    assert main(["--model", "/definitely/not/a/model"]) == 2


def test_completion_logprobs_include_sampled_token_and_offsets() -> None:
    lp = completion_logprobs(
        [1, 2],
        [-0.1, float("-inf")],
        [{3: -0.5}, {2: -1.0, 1: -2.0}],
        render=lambda t: f"token_id:{t}",
        text_of=TEXT,
    )
    assert lp["tokens"] == ["token_id:1", "token_id:2"]
    assert lp["token_logprobs"] == [-0.1, FLOOR]
    assert lp["top_logprobs"][0] == {"token_id:1": -0.1, "token_id:3": -0.5}
    assert lp["top_logprobs"][1] == {"token_id:2": FLOOR, "token_id:1": -2.0}
    assert lp["text_offset"] == [0, 1]


def test_chat_logprobs_sorted_alternatives() -> None:
    out = chat_logprobs([2], [-0.2], [{1: -3.0, 2: -0.2, 3: -1.0}], 2, render=TEXT)
    entry = out["content"][0]
    assert entry["token"] == "bc" and entry["bytes"] == [98, 99]
    assert [t["token"] for t in entry["top_logprobs"]] == ["bc", "d"]


def test_prompt_logprobs_entries_vllm_shape() -> None:
    entries = prompt_logprobs_entries([1, 2], [None, -0.7], [None, {3: -0.1}], TEXT)
    assert entries[0] is None
    assert entries[1] == {
        "2": {"logprob": -0.7, "rank": None, "decoded_token": "bc"},
        "3": {"logprob": -0.1, "rank": 1, "decoded_token": "d"},
    }


def test_build_params_defaults_and_limits() -> None:
    req = GenerateRequest(prompt="x", top_k=0, stop="\n")
    params = build_params(
        req, max_tokens=None, default_max_tokens=32, logprobs=None, max_logprobs=20
    )
    assert (params.max_tokens, params.top_k, params.stop, params.temperature) == (
        32,
        -1,
        ["\n"],
        1.0,
    )
    with pytest.raises(APIError, match="max_tokens") as err:
        build_params(req, max_tokens=33, default_max_tokens=32, logprobs=None, max_logprobs=20)
    assert err.value.param == "max_tokens"
    with pytest.raises(APIError) as err:
        build_params(
            GenerateRequest(prompt="x", min_p=2.0),
            max_tokens=None,
            default_max_tokens=32,
            logprobs=None,
            max_logprobs=20,
        )
    assert err.value.status == 400 and err.value.param == "min_p"
