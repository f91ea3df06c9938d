"""SGLang's native `POST /generate` on rlserve's engine (`sglang/srt/entrypoints/
http_server.py` `generate_request`, `sglang/srt/managers/tokenizer_manager.py`).

Which dialect a `/generate` body speaks: SGLang's when it has one of `text`,
`sampling_params`, `return_logprob`, `logprob_start_len`, `top_logprobs_num`,
`return_text_in_logprobs`, `rid`, `lora_path`, `token_ids_logprob` and no `prompt`; else
rlserve's seed-002 body (`prompt` or `input_ids` with flat sampling fields), answered as
before (`rl_routes.py`).

The reply is SGLang's: one `{"text", "output_ids", "meta_info"}` object for one prompt
with n = 1, else a list, prompt-major (prompt 0's n samples, then prompt 1's), as SGLang
expands a batch. With `stream`, every engine step sends `data: {...}` for each sample that
advanced, cumulative as SGLang streams by default (the text, ids and logprobs so far; a
batch's chunks carry `index`, the sample's place in that order), then `data: [DONE]`.
Bad input is a 400 before anything streams; a failure mid-stream is one
`data: {"error": {...}}` chunk, then `data: [DONE]`. Each prompt is one engine request
group (its own sampling params and adapter) whose caller id is the prompt's `rid`, so
`/abort_request` finds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rlserve.outputs import RequestOutput
from rlserve.sampling_params import SamplingParams
from rlserve.server.accumulate import new_results
from rlserve.server.errors import APIError
from rlserve.server.http_utils import unless_disconnected, wait_accepted
from rlserve.server.openai_format import SSE_HEADERS
from rlserve.server.prompt_input import tokenize_prompts
from rlserve.server.protocol import SamplingFields
from rlserve.server.request_group import RequestGroup
from rlserve.server.sampling import SAMPLING_FIELD_NAMES, build_params, fit_context
from rlserve.server.sglang_reply import ReplyContext, sample_reply
from rlserve.server.sglang_request import SGLANG_NAMES, SGLangBody, SGLangItem, sglang_items
from rlserve.server.sglang_request import validated as validated_body
from rlserve.server.sse_stream import sse_stream
from rlserve.server.state import ServerState

log = logging.getLogger(__name__)

_SAMPLING_NAMES = frozenset(SamplingFields.model_fields) | frozenset(
    f.name for f in dataclass_fields(SamplingParams)
)
_ENGINE_FIELDS = SAMPLING_FIELD_NAMES | {"prompt"}


def sglang_param(param: str | None) -> str | None:
    """SGLang's name for the field an rlserve check named."""
    if param in SGLANG_NAMES:
        return SGLANG_NAMES[param]
    if param in _SAMPLING_NAMES:
        return f"sampling_params.{param}"
    return param


def renamed(exc: APIError) -> APIError:
    return APIError(exc.status, exc.message, sglang_param(exc.param), exc.code)


class GroupSet:
    """The groups of one request, aborted together."""

    def __init__(self, groups: list[RequestGroup]) -> None:
        self.groups = groups

    def abort(self) -> None:
        for group in self.groups:
            group.abort()


def item_params(state: ServerState, item: SGLangItem) -> SamplingParams:
    """The engine's SamplingParams for one prompt (400 with SGLang's field names)."""
    cap = state.config.max_tokens
    max_tokens = item.max_tokens
    if not item.requested and max_tokens is not None and cap is not None:
        max_tokens = min(max_tokens, cap)  # SGLang's default of 128, within --max-tokens
    top = item.top_logprobs_num if item.return_logprob and item.top_logprobs_num else None
    wants_prompt = item.return_logprob and item.logprob_start_len >= 0
    try:
        params = build_params(
            item.fields,
            max_tokens=max_tokens,
            default_max_tokens=cap,
            logprobs=top,
            max_logprobs=state.config.max_logprobs,
            vocab_size=state.vocab_size,
            prompt_logprobs=(top or 0) if wants_prompt else None,
        )
    except APIError as exc:
        raise renamed(exc) from exc
    return replace(params, structured=item.structured) if item.structured else params


def fitted(
    state: ServerState, item: SGLangItem, params: SamplingParams, ids: list[int]
) -> SamplingParams:
    """`params` for prompt `ids`: logprob_start_len within it, max_tokens within the
    context (SGLang's rule: an explicit max_new_tokens past it is a 400)."""
    if item.logprob_start_len > len(ids):
        raise APIError(
            400,
            f"logprob_start_len ({item.logprob_start_len}) is higher than the number of "
            f"input tokens ({len(ids)})",
            "logprob_start_len",
        )
    if params.prompt_logprobs is not None and item.logprob_start_len == len(ids):
        params = replace(params, prompt_logprobs=None)  # no prompt position is asked for
    requested = "max_new_tokens" if item.requested else None
    try:
        return fit_context(params, [ids], state.max_model_len, requested)
    except APIError as exc:
        raise renamed(exc) from exc


def adapter_of(state: ServerState, item: SGLangItem) -> str | None:
    try:
        return state.resolve_model(item.lora_path)
    except APIError as exc:
        raise renamed(exc) from exc


async def submit_all(
    state: ServerState, items: list[SGLangItem], params: list[SamplingParams], ids: list
) -> list[RequestGroup]:
    """One group per prompt, all accepted by the engine (else none runs)."""
    groups: list[RequestGroup] = []
    try:
        for item, item_params_, prompt_ids in zip(items, params, ids, strict=True):
            lora = adapter_of(state, item)
            groups.append(state.loop.submit([prompt_ids], item_params_, lora, item.rid))
        for group in groups:
            await wait_accepted(group, _ENGINE_FIELDS)
    except BaseException as exc:
        GroupSet(groups).abort()
        if isinstance(exc, APIError):
            raise renamed(exc) from exc
        raise
    return groups


async def merged(groups: list[RequestGroup]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(group index, delta) from every group as they come."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, group: RequestGroup) -> None:
        try:
            async for _, delta in group:
                queue.put_nowait((index, delta))
            queue.put_nowait((index, None))
        except Exception as exc:
            queue.put_nowait((index, exc))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(groups)]
    try:
        remaining = len(groups)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def collect_all(groups: list[RequestGroup], n: int) -> list[RequestOutput]:
    results = [new_results(1, n)[0] for _ in groups]
    async for index, delta in merged(groups):
        results[index].merge(delta)
    return results


def sample_ids(items: list[SGLangItem], n: int) -> list[list[str]]:
    """Each sample's `meta_info.id`: the prompt's rid; with n > 1 fresh ids (SGLang)."""
    if n == 1:
        return [[item.rid] for item in items]
    return [[uuid.uuid4().hex for _ in range(n)] for _ in items]


def stream_events(
    ctx: ReplyContext,
    items: list[SGLangItem],
    groups: list[RequestGroup],
    ids: list[list[str]],
    indexed: bool,
) -> AsyncIterator[str]:
    """The SSE body; leaving early (a client disconnect) aborts every group."""
    n = groups[0].params.n
    totals = [new_results(1, n)[0] for _ in groups]

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for i, delta in merged(groups):
            totals[i].merge(delta)
            for progressed in delta.outputs:
                sample = totals[i].outputs[progressed.index]
                latency = time.perf_counter() - ctx.started if sample.finished else None
                reply = sample_reply(
                    ctx, items[i], totals[i], sample, ids[i][sample.index], latency
                )
                if indexed:
                    reply["index"] = i * n + sample.index
                yield reply

    return sse_stream(chunks(), GroupSet(groups).abort)


async def sglang_generate(
    state: ServerState, request: Request, body: dict[str, Any], started: float
) -> Response:
    """`POST /generate` with SGLang's body (see the module docstring)."""
    req: SGLangBody = validated_body(SGLangBody, body)
    items, batch = sglang_items(req)
    params = [item_params(state, item) for item in items]
    n = params[0].n
    state.loop.check_admissible(len(items) * n)
    prompts = [item.prompt for item in items]
    param = "text" if req.text is not None else "input_ids"
    prompt_ids = await tokenize_prompts(state.tokenizer, prompts, state.max_model_len, param)
    params = [fitted(state, *args) for args in zip(items, params, prompt_ids, strict=True)]
    groups = await submit_all(state, items, params, prompt_ids)
    ctx = ReplyContext(state, req.return_text_in_logprobs, req.return_prompt_token_ids, started)
    ids = sample_ids(items, n)
    many = batch or n > 1
    if req.stream:
        events = stream_events(ctx, items, groups, ids, indexed=many)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    results = await unless_disconnected(request, GroupSet(groups), collect_all(groups, n))  # type: ignore[arg-type]
    latency = time.perf_counter() - started
    replies = [
        sample_reply(ctx, item, result, sample, ids[i][sample.index], latency)
        for i, (item, result) in enumerate(zip(items, results, strict=True))
        for sample in result.outputs
    ]
    return JSONResponse(replies if many else replies[0])
