"""Request fields -> SamplingParams, with the server's limits applied."""

from __future__ import annotations

from dataclasses import fields

from rlserve.sampling_params import SamplingParams
from rlserve.server.errors import APIError, value_error_param
from rlserve.server.protocol import SamplingFields

SAMPLING_FIELD_NAMES = frozenset(f.name for f in fields(SamplingParams))
"""Fields a SamplingParams or engine ValueError may name first; routes add their own."""


def check_supported(req: SamplingFields) -> None:
    """Refuse (400) fields rlserve knows but does not implement, unless neutral."""
    neutral = {
        "presence_penalty": (None, 0, 0.0),
        "frequency_penalty": (None, 0, 0.0),
        "repetition_penalty": (None, 1, 1.0),
        "use_beam_search": (False,),
    }
    for name, allowed in neutral.items():
        if getattr(req, name) not in allowed:
            raise APIError(400, f"{name} is not supported by rlserve", param=name)
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported by rlserve", param="logit_bias")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of must equal n (rlserve returns every sample)", "best_of")


def temperature_of(req: SamplingFields) -> float:
    """The request's temperature; `do_sample: false` (Hugging Face's switch) means greedy."""
    if req.do_sample is False:
        return 0.0
    return 1.0 if req.temperature is None else req.temperature


def resolve_max_tokens(max_tokens: int | None, default_max_tokens: int) -> int:
    """The request's max_tokens, or the server default for None; above it is a 400."""
    if max_tokens is None:
        return default_max_tokens
    if max_tokens > default_max_tokens:
        raise APIError(
            400,
            f"max_tokens ({max_tokens}) exceeds the server limit of {default_max_tokens} "
            "(start the server with a larger --max-tokens)",
            param="max_tokens",
        )
    return max_tokens


def check_logprob_limits(
    logprobs: int | None, prompt_logprobs: int | None, max_logprobs: int
) -> None:
    """400 for more alternatives per token than the server returns."""
    for name, value in (("logprobs", logprobs), ("prompt_logprobs", prompt_logprobs)):
        if value is not None and value > max_logprobs:
            raise APIError(400, f"{name} must be <= {max_logprobs}, got {value}", param=name)


def build_params(
    req: SamplingFields,
    *,
    max_tokens: int | None,
    default_max_tokens: int,
    logprobs: int | None,
    max_logprobs: int,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """SamplingParams for `req`; 400 naming the field on any invalid value.

    `max_tokens` None means the server default; above the server limit is refused.
    `prompt_logprobs` overrides the request's (e.g. `echo` with `logprobs`). An `n` above
    the engine's batch is refused by the engine when the request is submitted.
    """
    check_supported(req)
    max_tokens = resolve_max_tokens(max_tokens, default_max_tokens)
    if prompt_logprobs is None:
        prompt_logprobs = req.prompt_logprobs
    check_logprob_limits(logprobs, prompt_logprobs, max_logprobs)
    try:
        return SamplingParams(
            n=req.n,
            temperature=temperature_of(req),
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if req.top_k in (None, 0) else req.top_k,
            min_p=0.0 if req.min_p is None else req.min_p,
            max_tokens=max_tokens,
            min_tokens=req.min_tokens,
            stop=req.stop or [],
            stop_token_ids=req.stop_token_ids or [],
            ignore_eos=req.ignore_eos,
            seed=req.seed,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            include_stop_str_in_output=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens,
        )
    except ValueError as exc:
        param = value_error_param(exc, SAMPLING_FIELD_NAMES)
        raise APIError(400, str(exc), param=param) from exc
