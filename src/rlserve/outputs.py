"""What the engine returns: one RequestOutput per prompt, one CompletionOutput per sample."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """One sampled completion.

    `logprobs[t]` is the logprob of `token_ids[t]` under log_softmax(logits / T) in fp32
    (T = 1 when greedy): the number a trainer computes for the same tokens.
    `sampling_logprobs[t]` is its logprob under the distribution actually sampled from
    (after top-k / top-p / min-p truncation and renormalisation, and min_tokens masking).
    `weight_versions[t]` is the policy version of the weights that produced `token_ids[t]`.
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] | None = None
    weight_versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id that matched
    # Set by `rlserve.tools.batch_generate_with_tools`: the calls parsed from `text`
    # (rlserve.tools.ToolCall) and those that could not be parsed (ToolCallError).
    tool_calls: list | None = None
    tool_call_errors: list | None = None
    # Speculative decoding, totals so far (not deltas): verification steps, guesses
    # verified and guesses that became tokens. The tokens are the same either way.
    spec_verify_steps: int = 0
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def extend(self, delta: CompletionOutput) -> None:
        """Append a later delta of the same sample (from `Engine.step()`) to this total."""
        self.text += delta.text
        self.token_ids += delta.token_ids
        self.logprobs += delta.logprobs
        self.sampling_logprobs += delta.sampling_logprobs
        self.weight_versions += delta.weight_versions
        if delta.top_logprobs is not None:
            if self.top_logprobs is None:
                self.top_logprobs = []
            self.top_logprobs += delta.top_logprobs
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason
        self.spec_verify_steps = max(self.spec_verify_steps, delta.spec_verify_steps)
        self.spec_proposed_tokens = max(self.spec_proposed_tokens, delta.spec_proposed_tokens)
        self.spec_accepted_tokens = max(self.spec_accepted_tokens, delta.spec_accepted_tokens)


@dataclass
class RequestOutput:
    """All samples of one prompt. From `Engine.step()` it is a delta: only new tokens/text;
    each sample's finish is reported once, and `prompt_logprobs` come with the last delta.
    `error` is set (on the last delta) when the request failed inside the engine: it was
    aborted alone, its samples end with finish_reason "abort"."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[dict[int, float] | None] | None = None
    num_cached_tokens: int = 0
    error: str | None = None

    def merge(self, delta: RequestOutput) -> None:
        """Add a later delta of the same request (from `Engine.step()`) to this total."""
        if delta.prompt_token_ids:
            self.prompt, self.prompt_token_ids = delta.prompt, delta.prompt_token_ids
        self.finished = delta.finished
        self.error = delta.error or self.error
        self.num_cached_tokens = delta.num_cached_tokens
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
            self.prompt_top_logprobs = delta.prompt_top_logprobs
        by_index = {c.index: c for c in self.outputs}
        for d in delta.outputs:
            if d.index not in by_index:
                by_index[d.index] = CompletionOutput(index=d.index)
                self.outputs.append(by_index[d.index])
            by_index[d.index].extend(d)
