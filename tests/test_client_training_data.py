"""Training data extraction from OpenAI/vLLM/rlserve-shaped responses (no server)."""

from __future__ import annotations

from rlserve.client import (
    TRAIN_KEY,
    chat_training_data,
    completion_training_data,
    generate_training_data,
    parse_token_id,
)
from rlserve.client.payloads import PreparedCall, attach_training_data


def test_parse_token_id() -> None:
    assert parse_token_id("token_id:42") == 42
    assert parse_token_id("token_id:0") == 0
    assert parse_token_id("hello") is None
    assert parse_token_id("token_id:x") is None
    assert parse_token_id(None) is None


def _vllm_completion(**choice_extra: object) -> dict:
    choice = {
        "index": 0,
        "text": " 4",
        "finish_reason": "stop",
        "logprobs": {
            "tokens": ["token_id:220", "token_id:19"],
            "token_logprobs": [-0.5, -0.25],
            "top_logprobs": [{"token_id:220": -0.5}, {"token_id:19": -0.25}],
            "text_offset": [0, 1],
        },
    }
    choice.update(choice_extra)
    return {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}


def test_completion_uses_return_token_ids_fields() -> None:
    resp = _vllm_completion(prompt_token_ids=[1, 2, 3], token_ids=[220, 19])
    train = completion_training_data(resp)
    assert train["prompt_tokens"] == [1, 2, 3]
    assert train["response_tokens"] == [220, 19]
    assert train["response_logprobs"] == [-0.5, -0.25]
    assert train["finish_reason"] == "stop"
    assert len(train["samples"]) == 1


def test_completion_falls_back_to_token_id_strings_and_given_prompt() -> None:
    train = completion_training_data(_vllm_completion(), per_prompt=[[7, 8]])
    assert train["prompt_tokens"] == [7, 8]
    assert train["response_tokens"] == [220, 19]


def test_completion_fallback_per_prompt_follows_vllm_choice_indices() -> None:
    choices = [dict(_vllm_completion()["choices"][0], index=i) for i in range(4)]
    train = completion_training_data({"choices": choices}, per_prompt=[[1], [2]], n=2)
    assert [s["prompt_tokens"] for s in train["samples"]] == [[1], [1], [2], [2]]
    only_first = completion_training_data({"choices": choices}, per_prompt=[[1]], n=2)
    assert [s["prompt_tokens"] for s in only_first["samples"]] == [[1], [1], None, None]


def test_completion_with_echo_drops_prompt_part() -> None:
    resp = _vllm_completion()
    lp = resp["choices"][0]["logprobs"]
    lp["tokens"] = ["token_id:7", "token_id:8", *lp["tokens"]]
    lp["token_logprobs"] = [None, -3.0, *lp["token_logprobs"]]
    train = completion_training_data(resp, echo=True, per_prompt=[[7, 8]])
    assert train["response_tokens"] == [220, 19]
    assert train["response_logprobs"] == [-0.5, -0.25]
    with_ids = _vllm_completion(prompt_token_ids=[7, 8], token_ids=[220, 19])
    with_ids["choices"][0]["logprobs"] = lp
    assert completion_training_data(with_ids, echo=True)["response_logprobs"] == [-0.5, -0.25]


def test_completion_without_token_info_gives_none() -> None:
    resp = {"choices": [{"index": 0, "text": "x", "finish_reason": "length", "logprobs": None}]}
    train = completion_training_data(resp)
    assert train["prompt_tokens"] is None
    assert train["response_tokens"] is None
    assert train["response_logprobs"] is None


def test_completion_several_choices_sorted_by_index() -> None:
    a = _vllm_completion(token_ids=[1])["choices"][0]
    b = dict(_vllm_completion(token_ids=[2])["choices"][0], index=1)
    train = completion_training_data({"choices": [b, a]})
    assert [s["index"] for s in train["samples"]] == [0, 1]
    assert train["response_tokens"] == [1]
    assert train["samples"][1]["response_tokens"] == [2]


def test_chat_from_vllm_shape() -> None:
    resp = {
        "object": "chat.completion",
        "prompt_token_ids": [5, 6],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
                "logprobs": {
                    "content": [
                        {"token": "token_id:11", "logprob": -0.1, "top_logprobs": []},
                        {"token": "token_id:12", "logprob": -0.2, "top_logprobs": []},
                    ]
                },
            }
        ],
    }
    train = chat_training_data(resp)
    assert train == {
        "prompt_tokens": [5, 6],
        "response_tokens": [11, 12],
        "response_logprobs": [-0.1, -0.2],
        "finish_reason": "stop",
        "samples": train["samples"],
    }
    resp["choices"][0]["token_ids"] = [11, 12, 13]
    assert chat_training_data(resp)["response_tokens"] == [11, 12, 13]


def test_generate_single_and_grouped() -> None:
    single = {"prompt_ids": [1], "completion_ids": [2, 3], "logprobs": [-1.0, -2.0]}
    single["finish_reason"] = "length"
    train = generate_training_data(single)
    assert train["response_tokens"] == [2, 3]
    assert train["finish_reason"] == "length"
    grouped = {"results": [single, dict(single, completion_ids=[4])]}
    assert generate_training_data(grouped)["samples"][1]["response_tokens"] == [4]


def test_attach_uses_token_id_prompt() -> None:
    call = PreparedCall("/v1/completions", {"prompt": [3, 4]})
    resp = attach_training_data("completion", call, _vllm_completion())
    assert resp[TRAIN_KEY]["prompt_tokens"] == [3, 4]
    assert attach_training_data("completion", call, "not json") == "not json"
