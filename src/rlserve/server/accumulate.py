"""Whole results for non-streaming responses: step() deltas merged by `RequestOutput.merge`."""

from __future__ import annotations

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.server.request_group import RequestGroup


def new_results(num_prompts: int, n: int) -> list[RequestOutput]:
    """One empty total per prompt, holding its `n` samples in index order."""
    return [
        RequestOutput("", None, [], [CompletionOutput(i) for i in range(n)])
        for _ in range(num_prompts)
    ]


async def collect(group: RequestGroup) -> list[RequestOutput]:
    """Run `group` to the end; one RequestOutput per prompt, in prompt order."""
    results = new_results(len(group.prompts), group.params.n)
    async for index, delta in group:
        results[index].merge(delta)
    return results
