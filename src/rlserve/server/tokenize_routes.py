"""vLLM's `POST /tokenize` and `POST /detokenize`, in vLLM's shapes.

`/tokenize` takes a `prompt` (text) or chat `messages` (rendered with the chat template as
`/v1/chat/completions` renders them) and answers `{count, max_model_len, tokens,
token_strs}`; `/detokenize` takes `{tokens}` and answers `{prompt}`. Tokenising and
decoding run in worker threads, never on the event loop. As in vLLM, a text prompt is not
checked against the context length (the body limit bounds it); a chat is, as the chat
route checks it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from rlserve.server.chat_format import render_prompt
from rlserve.server.errors import APIError, validation_message
from rlserve.server.http_utils import parse_body
from rlserve.server.protocol import ChatCompletionRequest
from rlserve.server.state import ServerState, post_routes

StrictTokenId = Annotated[int, Strict()]  # `true` is not a token id
B = TypeVar("B", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None


class TokenizeCompletionRequest(_Body):
    """vLLM's `TokenizeCompletionRequest`."""

    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(_Body):
    """vLLM's `TokenizeChatRequest` (no multimodal fields: rlserve serves text)."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False  # the chat template adds them
    return_token_strs: bool | None = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None


class DetokenizeRequest(_Body):
    """vLLM's `DetokenizeRequest`."""

    tokens: list[StrictTokenId]


def _tokenize_request_type(
    body: dict[str, Any],
) -> type[TokenizeCompletionRequest] | type[TokenizeChatRequest]:
    """Chat when the body has `messages`, else a text prompt (vLLM's two request types)."""
    if "messages" in body and "prompt" in body:
        raise APIError(400, "give either prompt or messages, not both", param="messages")
    if "messages" in body:
        return TokenizeChatRequest
    if "prompt" not in body:
        raise APIError(400, "prompt or messages is required", param="prompt")
    return TokenizeCompletionRequest


class _RawBody(BaseModel):
    """Any JSON object: `parse_body` reads and decodes it (off the event loop when large),
    then it is validated as the request type its fields select."""

    model_config = ConfigDict(extra="allow")


async def _parse_tokenize(
    state: ServerState, request: Request
) -> TokenizeCompletionRequest | TokenizeChatRequest:
    raw = await parse_body(request, _RawBody, state.config.max_request_bytes)
    body = raw.model_dump()
    request_type = _tokenize_request_type(body)
    if body.get("continue_final_message") is True and body.get("add_generation_prompt") is True:
        raise APIError(  # vLLM's rule and message
            400,
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            param="continue_final_message",
        )
    return _validated(request_type, body)


def _validated(request_type: type[B], body: dict[str, Any]) -> B:
    try:
        return request_type.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(400, message, param) from exc


async def _chat_token_ids(state: ServerState, req: TokenizeChatRequest) -> list[int]:
    """The chat's token ids as `/v1/chat/completions` would send them to the engine."""
    fields = req.model_dump(exclude={"add_special_tokens", "return_token_strs"})
    chat = _validated(ChatCompletionRequest, fields)
    text, token_ids = await render_prompt(state, chat)
    if not req.add_special_tokens:
        return token_ids
    return await asyncio.to_thread(state.tokenizer.encode, text, add_special_tokens=True)


async def tokenize(state: ServerState, request: Request) -> Response:
    """`POST /tokenize`: vLLM's `TokenizeResponse`."""
    req = await _parse_tokenize(state, request)
    state.resolve_model(req.model)  # 404 for a model this server does not serve
    if isinstance(req, TokenizeChatRequest):
        token_ids = await _chat_token_ids(state, req)
    else:
        encode = state.tokenizer.encode
        token_ids = await asyncio.to_thread(
            encode, req.prompt, add_special_tokens=req.add_special_tokens
        )
    token_strs = None
    if req.return_token_strs:
        token_strs = await asyncio.to_thread(state.tokenizer.convert_ids_to_tokens, token_ids)
    return JSONResponse(
        {
            "count": len(token_ids),
            "max_model_len": state.max_model_len,
            "tokens": token_ids,
            "token_strs": token_strs,
        }
    )


def check_known_tokens(tokens: list[int], vocab_size: int) -> None:
    """400 naming the first id the tokenizer cannot decode (vLLM's wording)."""
    for position, token in enumerate(tokens):
        if not 0 <= token < vocab_size:
            raise APIError(
                400,
                f"tokens[{position}]: Token id {token} is out of vocabulary [0, {vocab_size})",
                param="tokens",
            )


async def detokenize(state: ServerState, request: Request) -> Response:
    """`POST /detokenize`: vLLM's `DetokenizeResponse`, `{"prompt": text}`."""
    req = await parse_body(request, DetokenizeRequest, state.config.max_request_bytes)
    state.resolve_model(req.model)
    check_known_tokens(req.tokens, len(state.tokenizer))
    text = await asyncio.to_thread(state.tokenizer.decode, req.tokens)
    return JSONResponse({"prompt": text})


def tokenize_router(state: ServerState) -> APIRouter:
    """`/tokenize` and `/detokenize` bound to `state`."""
    router = APIRouter()
    post_routes(router, state, {"/tokenize": tokenize, "/detokenize": detokenize})
    return router
