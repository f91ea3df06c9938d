"""Merge step() deltas into whole results for non-streaming responses."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.server.request_group import RequestGroup


@dataclass
class Sample:
    """One finished completion (all of its tokens)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    weight_versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def add(self, delta: CompletionOutput) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        self.logprobs += delta.logprobs
        self.sampling_logprobs += delta.sampling_logprobs
        self.top_logprobs += delta.top_logprobs or []
        self.weight_versions += delta.weight_versions
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.stop_reason = delta.stop_reason


@dataclass
class PromptResult:
    """Everything generated for one prompt: its token ids and `n` samples."""

    prompt_token_ids: list[int]
    samples: list[Sample]
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[dict[int, float] | None] | None = None
    num_cached_tokens: int = 0

    def add(self, delta: RequestOutput) -> None:
        if delta.prompt_token_ids:
            self.prompt_token_ids = list(delta.prompt_token_ids)
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
            self.prompt_top_logprobs = delta.prompt_top_logprobs
        self.num_cached_tokens = max(self.num_cached_tokens, delta.num_cached_tokens)
        for out in delta.outputs:
            self.samples[out.index].add(out)


def new_results(num_prompts: int, n: int) -> list[PromptResult]:
    return [PromptResult([], [Sample(i) for i in range(n)]) for _ in range(num_prompts)]


async def collect(group: RequestGroup) -> list[PromptResult]:
    """Run `group` to the end; one PromptResult per prompt, in prompt order."""
    results = new_results(len(group.prompts), group.params.n)
    async for index, delta in group:
        results[index].add(delta)
    return results
