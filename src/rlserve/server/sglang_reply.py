"""SGLang's `/generate` reply for one sample: `text`, `output_ids`, `meta_info`.

`meta_info` as SGLang's `TokenizerManager._handle_batch_output` builds it: `id`,
`finish_reason` ({"type": "stop", "matched": token id or string} / {"type": "length",
"length": n} / {"type": "abort", "message": ...}, null while streaming), `prompt_tokens`,
`weight_version` (the label of the weights that made the last token), with
`return_logprob` `input_token_logprobs`, `output_token_logprobs` (each
`[logprob, token_id, text or null]`), `output_token_logprobs_length` and, with
`top_logprobs_num`, `input_top_logprobs` / `output_top_logprobs`; then
`completion_tokens`, `cached_tokens`, `weight_versions` (spans, see weight_versions.py)
and, once finished, `e2e_latency`. Logprobs are the model's own log_softmax(logits / T).
rlserve adds `policy_version` (the server's now), `policy_versions` (the integer version
of each output token: SGLang's name `weight_versions` holds the spans) and, with
`return_logprob`, `sampling_logprobs` (under the distribution actually sampled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.server.logprob_format import clamp
from rlserve.server.sglang_request import SGLangItem
from rlserve.server.state import ServerState
from rlserve.server.weight_versions import version_spans


@dataclass
class ReplyContext:
    """What every sample's reply of one request shares."""

    state: ServerState
    with_text: bool  # return_text_in_logprobs
    with_prompt_ids: bool  # return_prompt_token_ids
    started: float  # perf_counter() when the request arrived


def finish_reason(sample: CompletionOutput, error: str | None) -> dict[str, Any] | None:
    """SGLang's finish reason object (None: not finished)."""
    reason = sample.finish_reason
    if reason is None:
        return None
    if reason == "length":
        return {"type": "length", "length": len(sample.token_ids)}
    if reason == "stop":
        matched = sample.stop_reason
        if matched is None and sample.token_ids:
            matched = sample.token_ids[-1]  # the end-of-sequence token
        return {"type": "stop", "matched": matched}
    message = error or ("Abort running request" if sample.token_ids else "Abort before prefill")
    return {"type": "abort", "message": message}


def _entry(ctx: ReplyContext, logprob: float | None, token_id: int) -> list[Any]:
    text = ctx.state.renderer.text(token_id) if ctx.with_text else None
    return [clamp(logprob), token_id, text]


def _top(ctx: ReplyContext, top: dict[int, float] | None, k: int) -> list[list[Any]] | None:
    if top is None:
        return None
    ranked = sorted(top.items(), key=lambda kv: -kv[1])[:k]
    return [_entry(ctx, lp, token_id) for token_id, lp in ranked]


def logprob_fields(
    ctx: ReplyContext, item: SGLangItem, result: RequestOutput, sample: CompletionOutput
) -> dict[str, Any]:
    """The logprob part of `meta_info` (`return_logprob`)."""
    start = item.logprob_start_len if item.logprob_start_len >= 0 else None
    prompt_ids = result.prompt_token_ids
    prompt_lps = result.prompt_logprobs or []
    inputs = range(start, len(prompt_lps)) if start is not None else range(0)
    fields: dict[str, Any] = {
        "input_token_logprobs": [_entry(ctx, prompt_lps[p], prompt_ids[p]) for p in inputs],
        "output_token_logprobs": [
            _entry(ctx, lp, t) for lp, t in zip(sample.logprobs, sample.token_ids, strict=False)
        ],
        "output_token_logprobs_length": len(sample.token_ids),
    }
    k = item.top_logprobs_num
    if k > 0:
        prompt_tops = result.prompt_top_logprobs or [None] * len(prompt_lps)
        fields["input_top_logprobs"] = [_top(ctx, prompt_tops[p], k) for p in inputs]
        fields["output_top_logprobs"] = [_top(ctx, top, k) for top in sample.top_logprobs or []]
    return fields


def meta_info(
    ctx: ReplyContext,
    item: SGLangItem,
    result: RequestOutput,
    sample: CompletionOutput,
    rid: str,
    latency: float | None,
) -> dict[str, Any]:
    """SGLang's `meta_info` for one sample so far (`latency`: seconds, once finished)."""
    state = ctx.state
    versions = sample.weight_versions
    spans = version_spans(versions, state.label_of, state.weight_version)
    meta: dict[str, Any] = {
        "id": rid,
        "finish_reason": finish_reason(sample, result.error),
        "prompt_tokens": len(result.prompt_token_ids),
        "weight_version": spans[-1]["version"],
    }
    if item.return_logprob:
        meta.update(logprob_fields(ctx, item, result, sample))
        meta["sampling_logprobs"] = [clamp(lp) for lp in sample.sampling_logprobs]
    meta["completion_tokens"] = len(sample.token_ids)
    meta["cached_tokens"] = result.num_cached_tokens
    meta["weight_versions"] = spans
    meta["policy_versions"] = versions
    meta["policy_version"] = state.policy_version
    if sample.spec_verify_steps:
        meta.update(spec_fields(sample))
    if latency is not None:
        meta["e2e_latency"] = round(latency, 6)
    return meta


def spec_fields(sample: CompletionOutput) -> dict[str, Any]:
    """SGLang's speculative-decoding meta_info: verification steps, guesses proposed and
    accepted, their ratio, and tokens per verification step (accepted guesses + 1)."""
    verify, proposed = sample.spec_verify_steps, sample.spec_proposed_tokens
    accepted = sample.spec_accepted_tokens
    return {
        "spec_verify_ct": verify,
        "spec_num_proposed_drafts": proposed,
        "spec_num_correct_drafts": accepted,
        "spec_accept_rate": accepted / proposed if proposed else 0.0,
        "spec_accept_length": 1 + accepted / verify,
    }


def sample_reply(
    ctx: ReplyContext,
    item: SGLangItem,
    result: RequestOutput,
    sample: CompletionOutput,
    rid: str,
    latency: float | None = None,
) -> dict[str, Any]:
    """`{"text", "output_ids", "meta_info"}` (+ `prompt_token_ids` when asked)."""
    reply: dict[str, Any] = {
        "text": sample.text,
        "output_ids": list(sample.token_ids),
        "meta_info": meta_info(ctx, item, result, sample, rid, latency),
    }
    if ctx.with_prompt_ids:
        reply["prompt_token_ids"] = result.prompt_token_ids
    return reply
