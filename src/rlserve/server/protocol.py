"""Request bodies: OpenAI's fields, vLLM's extra fields, and rlserve's `/generate`.

Types are checked here (wrong type -> 400 naming the field); value ranges are checked
by `SamplingParams`, so the server and the in-process engine refuse the same things.
Unknown fields are ignored, as vLLM does, so any OpenAI SDK version can talk to us.
Floats must be finite (no "inf"/NaN) and integers fit int64, as vLLM bounds `seed`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(_Body):
    """Sampling fields common to every endpoint (OpenAI + vLLM names)."""

    n: Int64 = 1
    temperature: float | None = None
    do_sample: bool | None = None  # Hugging Face's name; False means greedy
    top_p: float | None = None
    top_k: Int64 | None = None
    min_p: float | None = None
    max_tokens: Int64 | None = None
    min_tokens: Int64 = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[Int64] | None = None
    ignore_eos: bool = False
    seed: Int64 | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: Int64 | None = None  # -1: the whole vocabulary (vLLM)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (a string, as JSON keys are) -> bias
    allowed_token_ids: list[Int64] | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: Int64 | None = None
    # Known but unsupported: accepted only at their neutral values.
    best_of: Int64 | None = None
    use_beam_search: bool = False


class OpenAIFields(SamplingFields):
    model: str | None = None
    # Structured outputs (server/structured_outputs.py reads them): OpenAI's and vLLM's.
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False


PromptField = str | list[str] | list[int] | list[list[int]]  # one prompt, or a batch


class CompletionRequest(OpenAIFields):
    """`POST /v1/completions`."""

    prompt: PromptField
    logprobs: Int64 | None = None
    echo: bool = False
    suffix: str | None = None


class ChatCompletionRequest(OpenAIFields):
    """`POST /v1/chat/completions`."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: Int64 | None = None
    logprobs: bool = False
    top_logprobs: Int64 | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None  # refused unless --trust-request-chat-template
    chat_template_kwargs: dict[str, Any] | None = None


class GenerateRequest(SamplingFields):
    """rlserve's `POST /generate` (seed 002): one prompt, a list, or token ids.

    `logprobs` of the sampled tokens are always returned; `logprobs=k` (k >= 1) also
    returns the k most likely alternatives per token as `top_logprobs`.
    """

    prompt: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    model: str | None = None
    temperature: float | None = 1.0
    logprobs: Int64 | None = None
    policy_version: Int64 | None = None
    step_id: Int64 | None = None
    request_id: str | None = None
