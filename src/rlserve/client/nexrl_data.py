"""NexRL's training data (`nexrl_train`) next to rlserve's (`rlserve_train`).

NexRL's rollout workers read `response["nexrl_train"]` = {"prompt_tokens",
"response_tokens", "response_logprobs"}: three lists of the first choice (the field names
of nexrl/inference_service_client/*_inference_service_client.py). They are the same
numbers as `rlserve_train`'s top-level lists, which the server returned (token ids and
fp32 logprobs, never a re-tokenisation); a list the server left out is empty, as NexRL
leaves it.

A service holder (Tinker/Weaver, seed 000) answers `sample_from_prompt(...)` with
{"response", "prompt_tokens", "response_tokens", "response_logprobs", "finish_reason",
...}; `holder_reply` turns that into an OpenAI-style reply carrying both.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from rlserve._checks import is_number, is_token_ids
from rlserve.client.training_data import TRAIN_KEY, generate_training_data

NEXRL_TRAIN_KEY = "nexrl_train"
NEXRL_FIELDS = ("prompt_tokens", "response_tokens", "response_logprobs")
HOLDER_FIELDS = ("response", "finish_reason") + NEXRL_FIELDS


def nexrl_train(rlserve_train: dict[str, Any]) -> dict[str, list[Any]]:
    """NexRL's three lists from an `rlserve_train` dict (None becomes [])."""
    return {name: list(rlserve_train.get(name) or []) for name in NEXRL_FIELDS}


def with_nexrl_train(response: Any) -> dict[str, Any]:
    """`response` (a client reply with `rlserve_train`) with `nexrl_train` added."""
    if not isinstance(response, dict) or not isinstance(response.get(TRAIN_KEY), dict):
        raise ValueError(f"the server's reply carries no training data: {response!r}")
    response[NEXRL_TRAIN_KEY] = nexrl_train(response[TRAIN_KEY])
    return response


def checked_holder_result(result: Any) -> dict[str, Any]:
    """A service holder's sampling result, checked for the fields a reply needs."""
    if not isinstance(result, dict):
        raise ValueError(f"the service holder returned a {type(result).__name__}, not a dict")
    missing = [name for name in HOLDER_FIELDS if name not in result]
    if missing:
        raise ValueError(f"the service holder's result lacks {missing[0]!r}")
    for name in ("prompt_tokens", "response_tokens"):
        if not is_token_ids(result[name]):
            raise ValueError(f"the service holder's {name!r} must be a list of token ids")
    logprobs = result["response_logprobs"]
    if not isinstance(logprobs, list) or not all(is_number(lp) for lp in logprobs):
        raise ValueError("the service holder's 'response_logprobs' must be a list of numbers")
    return result


def holder_reply(result: Any, model: str, chat: bool) -> dict[str, Any]:
    """An OpenAI-style text or chat completion from a service holder's result, with
    `nexrl_train` and `rlserve_train`."""
    result = checked_holder_result(result)
    prompt, tokens = list(result["prompt_tokens"]), list(result["response_tokens"])
    choice: dict[str, Any] = {"index": 0, "finish_reason": result["finish_reason"]}
    if chat:
        message = {"role": "assistant", "content": result["response"]}
        choice["message"] = {**message, "tool_calls": result.get("tool_calls")}
    else:
        choice["text"] = result["response"]
    choice["logprobs"] = None
    reply = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(tokens),
            "total_tokens": len(prompt) + len(tokens),
        },
    }
    seed_002_shape = {
        "prompt_ids": prompt,
        "completion_ids": tokens,
        "logprobs": list(result["response_logprobs"]),
        "finish_reason": result["finish_reason"],
    }
    reply[TRAIN_KEY] = generate_training_data(seed_002_shape)
    reply[NEXRL_TRAIN_KEY] = nexrl_train(reply[TRAIN_KEY])
    return reply
