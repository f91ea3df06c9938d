"""OpenAI-compatible routes: `/v1/models`, `/v1/completions`, `/v1/chat/completions`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rlserve.outputs import RequestOutput
from rlserve.sampling_params import SamplingParams
from rlserve.server.accumulate import collect
from rlserve.server.chat_format import ChatView, render_prompt
from rlserve.server.completions_format import CompletionView
from rlserve.server.errors import APIError
from rlserve.server.http_utils import parse_body, unless_disconnected, wait_accepted
from rlserve.server.openai_format import SSE_HEADERS
from rlserve.server.prompt_input import request_prompts, tokenize_prompts
from rlserve.server.protocol import ChatCompletionRequest, CompletionRequest, OpenAIFields
from rlserve.server.request_group import RequestGroup
from rlserve.server.sampling import SAMPLING_FIELD_NAMES, build_params, fit_context
from rlserve.server.sse_stream import sse_stream
from rlserve.server.state import ServerState, new_id, post_routes
from rlserve.server.tool_calls import ToolCallFormat, force_tool_choice, prompt_opens_thinking

PARAM_FIELDS = SAMPLING_FIELD_NAMES | {"prompt", "messages"}
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions

log = logging.getLogger(__name__)


class _StreamView(Protocol):
    def usage_chunk(self) -> dict[str, Any]: ...


def _usage_modes(req: OpenAIFields) -> tuple[bool, bool]:
    """(a final usage chunk, usage on every chunk): `stream_options` as vLLM reads it."""
    options = req.stream_options
    include = bool(options and options.include_usage)
    return include, include and bool(options and options.continuous_usage_stats)


def _events(
    group: RequestGroup,
    to_chunks: Any,
    view: _StreamView,
    usage_modes: tuple[bool, bool],
    opening: list[dict[str, Any]] | None = None,
) -> AsyncIterator[str]:
    """SSE body: opening chunks, one chunk per delta, usage, `[DONE]`. Leaving early
    (client disconnect cancels this generator) aborts the group and frees its KV.
    With continuous usage every chunk carries the totals so far."""
    include_usage, continuous = usage_modes

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for chunk in opening or []:
            yield chunk
        async for index, delta in group:
            for chunk in to_chunks(index, delta):
                if continuous:
                    chunk = {**chunk, "usage": view.usage_chunk()["usage"]}
                yield chunk
        if include_usage:
            yield view.usage_chunk()

    return sse_stream(chunks(), group.abort)


def _stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


def model_cards(state: ServerState) -> list[dict[str, Any]]:
    """The base model, then one card per LoRA adapter, as vLLM's `show_available_models`
    (`serving_models.py`) lists them: an adapter's `root` is the path it was loaded from
    (its name when that is unknown) and its `parent` the base model's id. vLLM leaves an
    adapter's `max_model_len` null; rlserve sends the base model's, the context an
    adapter shares."""
    card = {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "rlserve",
        "root": state.model_path,
        "parent": None,
        "max_model_len": state.max_model_len,
    }
    adapters = [
        {**card, "id": name, "root": state.adapter_roots.get(name, name), "parent": card["id"]}
        for name in state.adapters()
    ]
    return [card, *adapters]


def check_stream_options(req: OpenAIFields) -> None:
    """vLLM's rule: `stream_options` only with `stream: true`."""
    options = req.stream_options
    if options is not None and options.model_fields_set and not req.stream:
        raise APIError(
            400, "Stream options can only be defined when `stream=True`.", "stream_options"
        )


def requested_length(req: OpenAIFields) -> tuple[str | None, int | None]:
    """The length field the client set and its value (chat: `max_completion_tokens` first,
    as vLLM reads them), or (None, None)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(req, name, None)
        if value is not None:
            return name, value
    return None, None


def completions_default(cap: int | None) -> int:
    return COMPLETIONS_MAX_TOKENS if cap is None else min(cap, COMPLETIONS_MAX_TOKENS)


def completion_params(state: ServerState, req: CompletionRequest) -> SamplingParams:
    check_stream_options(req)
    if req.suffix:
        raise APIError(400, "suffix is not supported by rlserve", param="suffix")
    echo_logprobs = None
    if req.echo and req.logprobs is not None:
        if req.stream:
            raise APIError(400, "echo with logprobs cannot be streamed", param="echo")
        echo_logprobs = max(req.logprobs, req.prompt_logprobs or 0)
    cap = state.config.max_tokens
    return build_params(
        req,
        max_tokens=completions_default(cap) if req.max_tokens is None else req.max_tokens,
        default_max_tokens=cap,
        logprobs=req.logprobs,
        max_logprobs=state.config.max_logprobs,
        vocab_size=state.vocab_size,
        prompt_logprobs=echo_logprobs,
    )


def chat_params(state: ServerState, req: ChatCompletionRequest) -> SamplingParams:
    check_stream_options(req)
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    return build_params(
        req,
        max_tokens=requested_length(req)[1],
        default_max_tokens=state.config.max_tokens,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        max_logprobs=state.config.max_logprobs,
        vocab_size=state.vocab_size,
    )


def tool_format(
    state: ServerState, req: ChatCompletionRequest, prompt_text: str
) -> ToolCallFormat | None:
    """Tool-call parsing for requests that offer tools (unless `tool_choice` is "none")."""
    parser = state.config.tool_call_parser
    if not parser or not req.tools or req.tool_choice == "none":
        return None
    return ToolCallFormat(
        parser, req.tools, prompt_opens_thinking(prompt_text), state.special_tokens
    )


async def create_completion(state: ServerState, request: Request) -> Response:
    """`POST /v1/completions`: JSON, or SSE when `stream`."""
    req = await parse_body(request, CompletionRequest, state.config.max_request_bytes)
    lora_name = state.resolve_model(req.model)
    prompts, _ = request_prompts(req.prompt, "prompt")
    params = completion_params(state, req)
    state.loop.check_admissible(len(prompts) * params.n)
    prompt_ids = await tokenize_prompts(state.tokenizer, prompts, state.max_model_len)
    params = fit_context(params, prompt_ids, state.max_model_len, requested_length(req)[0])
    group = state.loop.submit(prompt_ids, params, lora_name)
    await wait_accepted(group, PARAM_FIELDS)
    view = CompletionView(req, state, prompts, new_id("cmpl"))
    if req.stream:
        return _stream(_events(group, view.chunks, view, _usage_modes(req)))
    results = await unless_disconnected(request, group, collect(group))
    return JSONResponse(view.response(results))


async def create_chat_completion(state: ServerState, request: Request) -> Response:
    """`POST /v1/chat/completions`: JSON, or SSE when `stream`."""
    req = await parse_body(request, ChatCompletionRequest, state.config.max_request_bytes)
    lora_name = state.resolve_model(req.model)
    params = chat_params(state, req)
    state.loop.check_admissible(params.n)
    prompt_text, prompt_ids = await render_prompt(state, req)
    params = fit_context(params, [prompt_ids], state.max_model_len, requested_length(req)[0])
    think_open = prompt_opens_thinking(prompt_text)
    parser = state.config.tool_call_parser
    params = force_tool_choice(params, req, parser, think_open, state.tokenizer)
    tools = tool_format(state, req, prompt_text)
    group = state.loop.submit([prompt_ids], params, lora_name)
    await wait_accepted(group, PARAM_FIELDS)
    view = ChatView(req, state, new_id("chatcmpl"), prompt_ids, tools)
    if req.stream:

        def to_chunks(_: int, delta: RequestOutput) -> list[dict[str, Any]]:
            return view.chunks(delta)

        opening = view.role_chunks(req.n)
        return _stream(_events(group, to_chunks, view, _usage_modes(req), opening))
    results = await unless_disconnected(request, group, collect(group))
    return JSONResponse(view.response(results[0]))


def openai_router(state: ServerState) -> APIRouter:
    """The OpenAI-compatible routes bound to `state`."""
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models() -> Response:
        return JSONResponse({"object": "list", "data": model_cards(state)})

    @router.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        state.resolve_model(model_id)  # 404 for unknown ids
        cards = model_cards(state)
        return JSONResponse(next(c for c in cards if model_id in (c["id"], c["root"])))

    handlers = {
        "/v1/completions": create_completion,
        "/v1/chat/completions": create_chat_completion,
    }
    post_routes(router, state, handlers)

    return router
