"""rlserve's RL endpoint `POST /generate`: seed 002's request and response fields, or
SGLang's native body and reply (`sglang_generate.py`, which states how the two are told
apart: SGLang's keys such as `text` / `sampling_params` / `return_logprob`, and no
`prompt`)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.server.accumulate import collect
from rlserve.server.errors import APIError
from rlserve.server.http_utils import (
    check_json_content_type,
    decode_json,
    read_body,
    unless_disconnected,
    wait_accepted,
)
from rlserve.server.logprob_format import clamp
from rlserve.server.prompt_input import request_prompts, tokenize_prompts
from rlserve.server.protocol import GenerateRequest
from rlserve.server.sampling import SAMPLING_FIELD_NAMES, build_params, fit_context
from rlserve.server.sglang_generate import sglang_generate
from rlserve.server.sglang_request import is_sglang_body
from rlserve.server.sglang_request import validated as validated_body
from rlserve.server.state import ServerState, new_id, post_routes

if TYPE_CHECKING:
    from rlserve.engine.call_args import Prompt

PARAM_FIELDS = SAMPLING_FIELD_NAMES | {"prompt", "input_ids"}


def rl_prompts(req: GenerateRequest) -> tuple[list[Prompt], bool]:
    """Engine prompts, and whether the caller sent a list (answered with `results`)."""
    if (req.prompt is None) == (req.input_ids is None):
        raise APIError(400, "give exactly one of prompt or input_ids", param="prompt")
    if req.prompt is not None:
        return request_prompts(req.prompt, "prompt")
    return request_prompts(req.input_ids, "input_ids")


def top_logprobs_k(req: GenerateRequest) -> int | None:
    """`logprobs: k` (k >= 1) asks for k alternatives; the sampled token's logprob is
    always returned, so 0/None add nothing."""
    k = req.logprobs
    return k if k else None


def _item(result: RequestOutput, sample: CompletionOutput, with_top: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "prompt_ids": result.prompt_token_ids,
        "completion_ids": sample.token_ids,
        "text": sample.text,
        "logprobs": [clamp(lp) for lp in sample.logprobs],
        "finish_reason": sample.finish_reason,
        "stop_reason": sample.stop_reason,
        "sampling_logprobs": [clamp(lp) for lp in sample.sampling_logprobs],
        "weight_versions": sample.weight_versions,
    }
    if with_top:
        item["top_logprobs"] = [
            [[token_id, clamp(lp)] for token_id, lp in sorted(top.items(), key=lambda kv: -kv[1])]
            for top in sample.top_logprobs or []
        ]
    return item


def _items(results: list[RequestOutput], many: bool, with_top: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for p, result in enumerate(results):
        for sample in result.outputs:
            item = _item(result, sample, with_top)
            if many:
                item = {
                    "index": len(items),
                    "prompt_index": p,
                    "sample_index": sample.index,
                    **item,
                }
            items.append(item)
    return items


_PARSE_INLINE_BYTES = 256 * 1024  # decoding more would hold the event loop for milliseconds


async def json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object (strict JSON, at most `limit` bytes); 400 otherwise."""
    check_json_content_type(request)
    raw = await read_body(request, limit)
    if len(raw) > _PARSE_INLINE_BYTES:
        data = await asyncio.to_thread(decode_json, raw)
    else:
        data = decode_json(raw)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


async def generate(state: ServerState, request: Request) -> Response:
    """`POST /generate`: SGLang's reply to SGLang's body; else seed 002's response, or
    `results` for a list of prompts / n > 1."""
    start = time.perf_counter()
    body = await json_object(request, state.config.max_request_bytes)
    if is_sglang_body(body):
        return await sglang_generate(state, request, body, start)
    req: GenerateRequest = validated_body(GenerateRequest, body)
    lora_name = state.resolve_model(req.model)
    prompts, grouped = rl_prompts(req)
    k = top_logprobs_k(req)
    params = build_params(
        req,
        max_tokens=req.max_tokens,
        default_max_tokens=state.config.max_tokens,
        logprobs=k,
        max_logprobs=state.config.max_logprobs,
        vocab_size=state.vocab_size,
    )
    state.loop.check_admissible(len(prompts) * params.n)
    prompt_ids = await tokenize_prompts(state.tokenizer, prompts, state.max_model_len)
    requested = "max_tokens" if req.max_tokens is not None else None
    params = fit_context(params, prompt_ids, state.max_model_len, requested)
    group = state.loop.submit(prompt_ids, params, lora_name, req.request_id)
    await wait_accepted(group, PARAM_FIELDS)
    results = await unless_disconnected(request, group, collect(group))
    current = state.policy_version
    body: dict[str, Any] = {
        "request_id": req.request_id or new_id("gen"),
        "policy_version": current if req.policy_version is None else req.policy_version,
        "step_id": req.step_id,
    }
    many = grouped or params.n > 1
    items = _items(results, many, with_top=k is not None)
    if many:
        body["results"] = items
    else:
        body.update(items[0])
    body["metadata"] = {
        "batch_size": group.max_batch_size,
        "latency_ms": round((time.perf_counter() - start) * 1000.0, 3),
        "current_policy_version": current,
    }
    return JSONResponse(body)


def rl_router(state: ServerState) -> APIRouter:
    """`POST /generate` bound to `state`."""
    router = APIRouter()

    post_routes(router, state, {"/generate": generate})

    return router
