"""`/v1/chat/completions`: prompt rendering, responses and stream chunks."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlserve.chat_messages import chat_template_options, with_joined_text
from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.server.errors import APIError, shown
from rlserve.server.logprob_format import chat_logprobs, prompt_logprobs_entries
from rlserve.server.openai_format import (
    envelope,
    results_usage,
    token_id_fields,
    unrequested_token_fields,
    usage,
)
from rlserve.server.prompt_input import tokenize_chat_text
from rlserve.server.protocol import ChatCompletionRequest
from rlserve.server.state import ServerState
from rlserve.server.tool_calls import ToolCallFormat, check_request_tools, finish_reason

ROLES = ("system", "developer", "user", "assistant", "tool", "function")  # OpenAI's

# Request-supplied templates render here, never on the default executor that tokenises
# prompts and renders the server's own template: a looping one can hold at most these.
REQUEST_TEMPLATE_WORKERS = 2
_request_templates = ThreadPoolExecutor(
    REQUEST_TEMPLATE_WORKERS, thread_name_prefix="rlserve-request-template"
)


def _bad_message(position: int, problem: str) -> APIError:
    return APIError(400, f"messages[{position}]: {problem}", param="messages")


def _text_content(message: dict[str, Any], position: int) -> dict[str, Any]:
    """`message` checked, its OpenAI text parts joined into one string; content may only
    be missing from an assistant message that calls tools (as OpenAI allows)."""
    role = message.get("role")
    if not isinstance(role, str):
        raise _bad_message(position, "needs a string 'role'")
    if role not in ROLES:
        raise _bad_message(position, f"unknown role {shown(role)}; expected one of {list(ROLES)}")
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return message  # OpenAI: content is optional next to tool calls
        raise _bad_message(position, "needs 'content' (a string or a list of text parts)")
    if isinstance(content, str):
        return message
    if not isinstance(content, list):
        raise _bad_message(
            position, f"content must be a string or a list of parts, not {type(content).__name__}"
        )
    try:
        return with_joined_text(message, position)
    except ValueError as exc:  # names messages[position], as _bad_message does
        raise APIError(400, str(exc), param="messages") from exc


def brings_template(req: ChatCompletionRequest) -> bool:
    """Whether the request has its own chat template (a field or in chat_template_kwargs)."""
    in_kwargs = (req.chat_template_kwargs or {}).get("chat_template") is not None
    return req.chat_template is not None or in_kwargs


def check_request_template(state: ServerState, req: ChatCompletionRequest) -> None:
    """Refuse a request's own chat template unless the server trusts them (vLLM's rule
    and message): a template is code, and a looping one would hold a worker forever."""
    if brings_template(req) and not state.config.trust_request_chat_template:
        raise APIError(
            400,
            "Chat template is passed with request, but --trust-request-chat-template is not "
            "set. Refused request with untrusted chat template.",
            param="chat_template",
        )


def _apply_template(state: ServerState, req: ChatCompletionRequest, messages: list) -> str:
    options = {**chat_template_options(vars(req)), "tokenize": False}
    try:
        text = state.tokenizer.apply_chat_template(messages, **options)
    except Exception as exc:  # template errors come in many types (jinja, ValueError, ...)
        # A template's raise_exception() may quote message content: keep the echo short.
        raise APIError(
            400, f"cannot apply the chat template: {shown(str(exc), 300)}", "messages"
        ) from exc
    if not isinstance(text, str):
        raise APIError(400, "the chat template options must leave the prompt as text", "messages")
    return text


async def render_prompt(state: ServerState, req: ChatCompletionRequest) -> tuple[str, list[int]]:
    """Text and token ids of the conversation under the model's chat template (tools
    included), tokenised the way `Engine.render_chat` does it. Rendering and tokenising
    run in worker threads: neither a slow template nor a long text blocks the event loop,
    and a request's own template cannot hold the workers that tokenise."""
    check_request_template(state, req)
    check_request_tools(req.tools)
    messages = [_text_content(m, i) for i, m in enumerate(req.messages)]
    render = functools.partial(_apply_template, state, req, messages)
    if brings_template(req):
        text = await asyncio.get_running_loop().run_in_executor(_request_templates, render)
    else:
        text = await asyncio.to_thread(render)
    return text, await tokenize_chat_text(state.tokenizer, text, state.max_model_len)


def echo_prefix(req: ChatCompletionRequest) -> str:
    """vLLM's chat `echo`: repeat the final assistant message's content before the reply."""
    last = req.messages[-1]
    if req.echo and last.get("role") == "assistant" and isinstance(last.get("content"), str):
        return last["content"]
    return ""


class ChatView:
    """Turns engine results for one chat request into response dicts."""

    def __init__(
        self,
        req: ChatCompletionRequest,
        state: ServerState,
        response_id: str,
        prompt_ids: list[int],
        tool_format: ToolCallFormat | None = None,
    ) -> None:
        self.req = req
        self.tool_format = tool_format
        self.render = functools.partial(
            state.renderer.render, as_ids=req.return_tokens_as_token_ids
        )
        self.text_of = state.renderer.text
        self.prefix = echo_prefix(req)
        self.base = envelope(response_id, "chat.completion", state.model_name)
        self.prompt_ids = prompt_ids
        self.completion_tokens = 0
        self.cached_tokens = 0

    def _logprobs(self, ids: list[int], lps: list[float], tops: Any) -> dict[str, Any] | None:
        if not self.req.logprobs:
            return None
        return chat_logprobs(ids, lps, tops, self.req.top_logprobs or 0, self.render)

    # ---- whole response -------------------------------------------------------------------

    def response(self, result: RequestOutput) -> dict[str, Any]:
        body = {
            **self.base,
            "choices": [self.choice(s) for s in result.outputs],
            "usage": results_usage([result]),
            **unrequested_token_fields("chat"),
        }
        if self.req.return_token_ids:
            body["prompt_token_ids"] = result.prompt_token_ids
        if self.req.prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt_logprobs_entries(
                result.prompt_token_ids,
                result.prompt_logprobs,
                result.prompt_top_logprobs,
                self.text_of,
            )
        return body

    def choice(self, sample: CompletionOutput) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": sample.text}
        reason = sample.finish_reason
        if self.tool_format is not None:
            message.update(self.tool_format.message(sample.text))
            reason = finish_reason(reason, "tool_calls" in message)
        if message["content"] is not None:
            message["content"] = self.prefix + message["content"]
        choice = self._choice(sample, "message", message, reason)
        for name, null in unrequested_token_fields("chat_choice").items():
            choice.setdefault(name, null)
        return choice

    def _choice(
        self, out: CompletionOutput, key: str, value: dict[str, Any], reason: str | None
    ) -> dict[str, Any]:
        """A response choice (`key` "message") or a chunk's choice (`key` "delta")."""
        choice: dict[str, Any] = {
            "index": out.index,
            key: value,
            "logprobs": self._logprobs(out.token_ids, out.logprobs, out.top_logprobs),
            "finish_reason": reason,
            "stop_reason": out.stop_reason,
        }
        if self.req.return_token_ids:
            choice.update(token_id_fields(out))
        return choice

    # ---- stream chunks --------------------------------------------------------------------

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}

    def role_chunks(self, n: int) -> list[dict[str, Any]]:
        """The opening chunk of every choice: the assistant role (and any echo); the first
        also carries `prompt_token_ids` when asked for, as vLLM does."""
        delta = {"role": "assistant", "content": self.prefix}
        chunks = [
            self._chunk({"index": i, "delta": delta, "logprobs": None, "finish_reason": None})
            for i in range(n)
        ]
        if self.req.return_token_ids and chunks:
            chunks[0]["prompt_token_ids"] = self.prompt_ids
        return chunks

    def chunks(self, delta: RequestOutput) -> list[dict[str, Any]]:
        """One chunk per sample that progressed in this delta."""
        chunks = []
        self.cached_tokens = delta.num_cached_tokens
        for out in delta.outputs:
            fields, reason = self._delta_fields(out.index, out.text, out.finish_reason)
            self.completion_tokens += len(out.token_ids)
            chunks.append(self._chunk(self._choice(out, "delta", fields, reason)))
        return chunks

    def _delta_fields(
        self, index: int, text: str, reason: str | None
    ) -> tuple[dict[str, Any], str | None]:
        if self.tool_format is None:
            return ({"content": text} if text else {}), reason
        fields = self.tool_format.delta(index, text, final=reason is not None)
        return fields, finish_reason(reason, index in self.tool_format.made_calls)

    def usage_chunk(self) -> dict[str, Any]:
        return {
            **self.base,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": usage(len(self.prompt_ids), self.completion_tokens, self.cached_tokens),
        }
