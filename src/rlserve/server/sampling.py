"""Request fields -> SamplingParams, with the server's limits applied."""

from __future__ import annotations

import math
from dataclasses import fields, replace

from rlserve.sampling_params import SamplingParams
from rlserve.server.errors import APIError, value_error_param
from rlserve.server.protocol import SamplingFields
from rlserve.server.structured_outputs import structured_from_request

SAMPLING_FIELD_NAMES = frozenset(f.name for f in fields(SamplingParams))
"""Fields a SamplingParams or engine ValueError may name first; routes add their own."""


def check_supported(req: SamplingFields) -> None:
    """Refuse (400) fields rlserve knows but does not implement, unless neutral."""
    if req.use_beam_search:
        raise APIError(400, "use_beam_search is not supported by rlserve", param="use_beam_search")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of must equal n (rlserve returns every sample)", "best_of")


def logit_bias_of(req: SamplingFields) -> dict[int, float] | None:
    """`logit_bias` with integer keys (JSON keys are strings); 400 on a key that is not one."""
    if not req.logit_bias:
        return None
    try:
        return {int(token): bias for token, bias in req.logit_bias.items()}
    except ValueError as exc:
        raise APIError(
            400, f"logit_bias keys must be token ids, got {list(req.logit_bias)}", "logit_bias"
        ) from exc


def temperature_of(req: SamplingFields) -> float:
    """The request's temperature; `do_sample: false` (Hugging Face's switch) means greedy."""
    if req.do_sample is False:
        return 0.0
    return 1.0 if req.temperature is None else req.temperature


# The engine ends every sequence when the context is full, so a larger max_tokens means
# "until the context is full": what a request without max_tokens (and no --max-tokens) gets
# until `fit_context` knows its prompt lengths.
CONTEXT_END = 2**31 - 1


def resolve_max_tokens(max_tokens: int | None, cap: int | None) -> int:
    """The request's max_tokens; None gets the server's `--max-tokens` (None: until the
    context is full). Above `--max-tokens` is a 400."""
    if max_tokens is None:
        return CONTEXT_END if cap is None else cap
    if cap is not None and max_tokens > cap:
        raise APIError(
            400,
            f"max_tokens ({max_tokens}) exceeds the server limit of {cap} "
            "(start the server with a larger --max-tokens)",
            param="max_tokens",
        )
    return max_tokens


def fit_context(
    params: SamplingParams,
    prompt_ids: list[list[int]],
    max_model_len: int,
    requested: str | None,
) -> SamplingParams:
    """`params` with max_tokens bounded by the rest of the context (vLLM's rule).

    `requested` names the field the client set (max_tokens / max_completion_tokens): then
    more than the rest of the longest prompt's context is a 400 with vLLM's message. A
    default is cut to the rest of the shortest prompt's context (longer prompts stop when
    their context is full). Prompts that fill the context alone are left to the engine's
    check, which names the prompt.
    """
    check_truncation(params, max_model_len)
    lengths = [len(params.truncated_prompt(ids, max_model_len)) for ids in prompt_ids]
    longest, room = max(lengths), max_model_len - min(lengths)
    if longest >= max_model_len or room < 1:
        return params
    if requested is not None:
        if longest + params.max_tokens > max_model_len:
            raise APIError(
                400,
                _too_large(requested, params.max_tokens, max_model_len, longest),
                param=requested,
            )
        return params
    if params.max_tokens <= room:
        return params
    try:
        return replace(params, max_tokens=room)
    except ValueError as exc:  # min_tokens above the room left
        raise APIError(400, str(exc), param=value_error_param(exc, SAMPLING_FIELD_NAMES)) from exc


def check_truncation(params: SamplingParams, max_model_len: int) -> None:
    """400 for a `truncate_prompt_tokens` above the context (vLLM's message)."""
    k = params.truncate_prompt_tokens
    if k is not None and k > max_model_len:
        raise APIError(
            400,
            f"truncate_prompt_tokens value ({k}) is greater than max_model_len "
            f"({max_model_len}). Please, select a smaller truncation size.",
            param="truncate_prompt_tokens",
        )


def _too_large(field: str, max_tokens: int, max_model_len: int, prompt_tokens: int) -> str:
    return (
        f"'{field}' is too large: {max_tokens}. This model's maximum context length is "
        f"{max_model_len} tokens and your request has {prompt_tokens} input tokens "
        f"({max_tokens} > {max_model_len} - {prompt_tokens})."
    )


def check_logprob_limits(
    logprobs: int | None,
    prompt_logprobs: int | None,
    max_logprobs: int,
    vocab_size: int | None = None,
) -> None:
    """400 for more alternatives per token than `--max-logprobs` allows (vLLM's rule and
    message: -1 means the whole vocabulary, for the request and for the limit). Without
    `vocab_size` a request's -1 passes only an unlimited server."""
    full = vocab_size if vocab_size is not None else math.inf
    limit = full if max_logprobs == -1 else max_logprobs
    for name, kind, value in (
        ("logprobs", "sample", logprobs),
        ("prompt_logprobs", "prompt", prompt_logprobs),
    ):
        wanted = full if value == -1 else value
        if wanted and wanted > limit:
            shown_value = "-1 (the whole vocabulary)" if wanted is math.inf else wanted
            raise APIError(
                400,
                f"Requested {kind} logprobs of {shown_value}, which is greater than max "
                f"allowed: {limit}",
                param=name,
            )


def build_params(
    req: SamplingFields,
    *,
    max_tokens: int | None,
    default_max_tokens: int | None,
    logprobs: int | None,
    max_logprobs: int,
    prompt_logprobs: int | None = None,
    vocab_size: int | None = None,
) -> SamplingParams:
    """SamplingParams for `req`; 400 naming the field on any invalid value.

    `max_tokens` None means `default_max_tokens` (`--max-tokens`; None: until the context
    is full, see `fit_context`); above `default_max_tokens` is refused.
    `prompt_logprobs` overrides the request's (e.g. `echo` with `logprobs`). An `n` above
    the engine's batch is refused by the engine when the request is submitted.
    `vocab_size` resolves `logprobs: -1` against `--max-logprobs`.
    """
    check_supported(req)
    max_tokens = resolve_max_tokens(max_tokens, default_max_tokens)
    if prompt_logprobs is None:
        prompt_logprobs = req.prompt_logprobs
    check_logprob_limits(logprobs, prompt_logprobs, max_logprobs, vocab_size)
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
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            logit_bias=logit_bias_of(req),
            allowed_token_ids=req.allowed_token_ids,
            bad_words=req.bad_words or [],
            truncate_prompt_tokens=req.truncate_prompt_tokens,
            structured=structured_from_request(req),
        )
    except ValueError as exc:
        param = value_error_param(exc, SAMPLING_FIELD_NAMES)
        raise APIError(400, str(exc), param=param) from exc
