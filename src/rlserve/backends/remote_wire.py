"""What the remote backend sends to and reads from an OpenAI-compatible server: the
`/v1/completions` fields of a request, a completion's sample, prompt logprobs in vLLM's
and SGLang's shapes, and weight-version labels."""

from __future__ import annotations

from typing import Any

from rlserve._checks import is_int, is_number
from rlserve.backends.base import UNKNOWN_VERSION, Sample
from rlserve.sampling_params import SamplingParams


def int_version(value: object) -> int:
    """A server's weight version as an int: ints and int-like labels ("3"); anything else
    (SGLang's "default", None) is UNKNOWN_VERSION."""
    if is_int(value):
        return int(value)  # type: ignore[arg-type]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return UNKNOWN_VERSION


def prompt_logprob_values(entries: object, tokens: list[int], start: int) -> list[float]:
    """vLLM's `prompt_logprobs` (None, then {"<id>": {"logprob", ...}} per position): the
    logprobs of `tokens[start:]`."""
    if not isinstance(entries, list) or len(entries) != len(tokens):
        raise RuntimeError(
            "the server returned no prompt_logprobs for every prompt position "
            "(scoring needs vLLM's prompt_logprobs on /v1/completions)"
        )
    values = []
    for t in range(start, len(tokens)):
        entry = entries[t].get(str(tokens[t])) if isinstance(entries[t], dict) else None
        value = entry.get("logprob") if isinstance(entry, dict) else None
        if not is_number(value):
            raise RuntimeError(f"the server returned no logprob for prompt position {t}")
        values.append(float(value))  # type: ignore[arg-type]
    return values


def sglang_input_logprobs(reply: object, response: list[int]) -> list[float]:
    """The logprobs of `response` from SGLang's `meta_info.input_token_logprobs`
    ([logprob, token_id, text] per position from `logprob_start_len`)."""
    meta = reply.get("meta_info") if isinstance(reply, dict) else None
    entries = meta.get("input_token_logprobs") if isinstance(meta, dict) else None
    if not isinstance(entries, list) or len(entries) != len(response):
        raise RuntimeError("the server returned no input_token_logprobs for the response")
    values = []
    for entry, token in zip(entries, response, strict=True):
        if not (isinstance(entry, list) and len(entry) >= 2 and entry[1] == token):
            raise RuntimeError(f"input_token_logprobs do not match the response: {entry!r}")
        if not is_number(entry[0]):
            raise RuntimeError(f"the server returned no logprob for token {token}")
        values.append(float(entry[0]))
    return values


def completion_fields(params: SamplingParams) -> dict[str, Any]:
    """`/v1/completions` body fields for `params` (n = 1; the client adds logprobs and
    token ids)."""
    return {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "min_tokens": params.min_tokens,
        "stop": params.stop or None,
        "stop_token_ids": params.stop_token_ids or None,
        "ignore_eos": params.ignore_eos,
        "seed": params.seed,
        "logprobs": 1,
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
    }


def sample_from_completion(response: dict[str, Any]) -> Sample:
    """The first choice of a client completion response (with `rlserve_train`)."""
    train = response.get("rlserve_train") or {}
    tokens, logprobs = train.get("response_tokens"), train.get("response_logprobs")
    if (
        tokens is None
        or logprobs is None
        or len(tokens) != len(logprobs)
        or any(lp is None for lp in logprobs)
    ):
        return Sample.failed(
            "the server returned no token ids or logprobs for the completion "
            "(it must support return_token_ids and logprobs)"
        )
    choice = (response.get("choices") or [{}])[0]
    versions = choice.get("weight_versions")
    if not (isinstance(versions, list) and len(versions) == len(tokens)):
        versions = [UNKNOWN_VERSION] * len(tokens)
    return Sample(
        list(tokens),
        [float(lp) for lp in logprobs],
        list(versions),
        train.get("finish_reason"),
        choice.get("stop_reason"),
    )
