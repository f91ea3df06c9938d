"""`/v1/completions` responses and stream chunks (OpenAI shape + vLLM extra fields)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.server.logprob_format import completion_logprobs, prompt_logprobs_entries
from rlserve.server.openai_format import (
    envelope,
    results_usage,
    token_id_fields,
    unrequested_token_fields,
    usage,
)
from rlserve.server.protocol import CompletionRequest
from rlserve.server.state import ServerState

if TYPE_CHECKING:
    from rlserve.engine.call_args import Prompt


class CompletionView:
    """Turns engine results for one completions request into response dicts."""

    def __init__(
        self, req: CompletionRequest, state: ServerState, prompts: list[Prompt], response_id: str
    ) -> None:
        self.req = req
        self.n = req.n
        self.render = functools.partial(
            state.renderer.render, as_ids=req.return_tokens_as_token_ids
        )
        self.text_of = state.renderer.text
        self.tokenizer = state.tokenizer
        self.prompts = prompts
        self.base = envelope(response_id, "text_completion", state.model_name)
        # streaming state
        self.prompt_ids: dict[int, list[int]] = {}
        self.cached_tokens: dict[int, int] = {}
        self.offsets: dict[int, int] = {}
        self.completion_tokens = 0

    def prompt_text(self, index: int, prompt_ids: list[int]) -> str:
        prompt = self.prompts[index]
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt_ids)

    # ---- whole response -------------------------------------------------------------------

    def response(self, results: list[RequestOutput]) -> dict[str, Any]:
        choices = [self.choice(i, r, s) for i, r in enumerate(results) for s in r.outputs]
        return {**self.base, "choices": choices, "usage": results_usage(results)}

    def choice(self, index: int, result: RequestOutput, sample: CompletionOutput) -> dict[str, Any]:
        req, prompt_ids = self.req, result.prompt_token_ids
        prefix = self.prompt_text(index, prompt_ids) if req.echo else ""
        choice = _text_choice(index * self.n + sample.index, prefix + sample.text, sample)
        choice.update(unrequested_token_fields("choice"))
        if req.logprobs is not None:
            ids, lps = sample.token_ids, list(sample.logprobs)
            tops = list(sample.top_logprobs or [])
            if req.echo:
                ids = prompt_ids + ids
                lps = _padded(result.prompt_logprobs, len(prompt_ids)) + lps
                tops = _padded(result.prompt_top_logprobs, len(prompt_ids)) + tops
            choice["logprobs"] = completion_logprobs(ids, lps, tops, self.render, self.text_of)
        if req.return_token_ids:
            choice.update(token_id_fields(sample, prompt_ids))
        if req.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs_entries(
                prompt_ids, result.prompt_logprobs, result.prompt_top_logprobs, self.text_of
            )
        return choice

    # ---- stream chunks --------------------------------------------------------------------

    def chunks(self, index: int, delta: RequestOutput) -> list[dict[str, Any]]:
        """One chunk per sample that progressed in this delta."""
        if delta.prompt_token_ids:
            self.prompt_ids[index] = list(delta.prompt_token_ids)
        self.cached_tokens[index] = delta.num_cached_tokens
        prompt_ids = self.prompt_ids.get(index, [])
        chunks = []
        for out in delta.outputs:
            choice_index = index * self.n + out.index
            first = choice_index not in self.offsets
            prefix = self.prompt_text(index, prompt_ids) if first and self.req.echo else ""
            offset = self.offsets.get(choice_index, len(prefix))
            choice = _text_choice(choice_index, prefix + out.text, out)
            if self.req.logprobs is not None:
                choice["logprobs"] = completion_logprobs(
                    out.token_ids, out.logprobs, out.top_logprobs, self.render, self.text_of, offset
                )
            self.offsets[choice_index] = offset + sum(len(self.text_of(t)) for t in out.token_ids)
            if self.req.return_token_ids:
                choice.update(token_id_fields(out, prompt_ids if first else None))
            if self.req.prompt_logprobs is not None and delta.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs_entries(
                    prompt_ids, delta.prompt_logprobs, delta.prompt_top_logprobs, self.text_of
                )
            self.completion_tokens += len(out.token_ids)
            chunks.append({**self.base, "choices": [choice]})
        return chunks

    def usage_chunk(self) -> dict[str, Any]:
        prompt_tokens = sum(len(ids) for ids in self.prompt_ids.values())
        cached = sum(self.cached_tokens.values())
        totals = usage(prompt_tokens, self.completion_tokens, cached)
        return {**self.base, "choices": [], "usage": totals}


def _text_choice(index: int, text: str, out: CompletionOutput) -> dict[str, Any]:
    """A choice without its optional fields (logprobs None until asked for)."""
    return {
        "index": index,
        "text": text,
        "logprobs": None,
        "finish_reason": out.finish_reason,
        "stop_reason": out.stop_reason,
    }


def _padded(values: list[Any] | None, length: int) -> list[Any]:
    """Prompt logprob lists padded with None to the prompt's length."""
    values = list(values or [])
    return (values + [None] * length)[:length]
