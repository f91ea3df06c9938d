"""Request fields -> SamplingParams, with the server's limits applied."""

from __future__ import annotations

from dataclasses import fields

from rlserve.sampling_params import SamplingParams
from rlserve.server.errors import APIError, value_error_param
from rlserve.server.protocol import SamplingFields

_PARAM_FIELDS = {f.name for f in fields(SamplingParams)} | {"max_completion_tokens"}


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


def check_schedulable(n: int, max_batch: int) -> None:
    """Refuse (400) an `n` the scheduler could never run: all n samples of a prompt must
    share one step, so n > the batch size would wait forever and block later requests."""
    if n > max_batch:
        raise APIError(
            400,
            f"n ({n}) exceeds the {max_batch} sequences one engine step can run; "
            "lower n or start the server with a larger --max-batch",
            param="n",
        )


def temperature_of(req: SamplingFields) -> float:
    """The request's temperature; `do_sample: false` (Hugging Face's switch) means greedy."""
    if req.do_sample is False:
        return 0.0
    return 1.0 if req.temperature is None else req.temperature


def build_params(
    req: SamplingFields,
    *,
    max_tokens: int | None,
    default_max_tokens: int,
    logprobs: int | None,
    max_logprobs: int,
    max_batch: int | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """SamplingParams for `req`; 400 naming the field on any invalid value.

    `max_tokens` None means the server default; above the server limit is refused.
    `max_batch`: the engine's sequences per step, the most `n` can be (None: no bound).
    `prompt_logprobs` overrides the request's (e.g. `echo` with `logprobs`).
    """
    check_supported(req)
    if max_batch is not None:
        check_schedulable(req.n, max_batch)
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif max_tokens > default_max_tokens:
        raise APIError(
            400,
            f"max_tokens ({max_tokens}) exceeds the server limit of {default_max_tokens} "
            "(start the server with a larger --max-tokens)",
            param="max_tokens",
        )
    if prompt_logprobs is None:
        prompt_logprobs = req.prompt_logprobs
    for name, value in (("logprobs", logprobs), ("prompt_logprobs", prompt_logprobs)):
        if value is not None and value > max_logprobs:
            raise APIError(400, f"{name} must be <= {max_logprobs}, got {value}", param=name)
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
        raise APIError(400, str(exc), param=value_error_param(str(exc), _PARAM_FIELDS)) from exc
