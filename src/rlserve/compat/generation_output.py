"""`GenerationOutput`, seed 003's result of `InferenceEngine.generate`, and its rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationOutput:
    """One entry per completion, in prompt order (with `rollout.n` > 1, the n completions
    of a prompt are next to each other).

    `completions`: the text (special tokens skipped); `token_ids`: the response tokens,
    unpadded (with tools: the whole stream after the prompt, tool output included).
    `metadata[i]`: `response_ids` (the response padded to `rollout.response_length` with
    the pad token, as VERL's `responses` tensor), `response_mask` (same length: 1 on tokens
    the model sampled, 0 on tool output, chat-template tokens and padding), `prompt_ids`,
    `logprobs` and `weight_versions` (aligned with `token_ids`; 0.0 and -1 on tokens
    the model did not sample), `finish_reason`, `error` (set when the request failed
    outside the model; then nothing was sampled), and with tools `messages` (the
    conversation in OpenAI shape) and `num_turns`.
    """

    completions: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.completions)


@dataclass
class Response:
    """One completion before padding: what a backend or a multi-turn rollout produced."""

    prompt_ids: list[int]
    token_ids: list[int]
    mask: list[int]
    logprobs: list[float]
    weight_versions: list[int]
    finish_reason: str | None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def collect(tokenizer: Any, responses: list[Response], response_length: int) -> GenerationOutput:
    """The `GenerationOutput` of `responses`, each padded to `response_length`."""
    pad_id = pad_token_id(tokenizer)
    out = GenerationOutput()
    for r in responses:
        padding = response_length - len(r.token_ids)
        out.completions.append(tokenizer.decode(r.token_ids, skip_special_tokens=True))
        out.token_ids.append(list(r.token_ids))
        out.metadata.append(
            {
                "response_ids": list(r.token_ids) + [pad_id] * padding,
                "response_mask": list(r.mask) + [0] * padding,
                "prompt_ids": list(r.prompt_ids),
                "logprobs": list(r.logprobs),
                "weight_versions": list(r.weight_versions),
                "finish_reason": r.finish_reason,
                "error": r.error,
                **r.extra,
            }
        )
    return out


def pad_token_id(tokenizer: Any) -> int:
    """The pad token id, else EOS, else 0 (VERL pads responses the same way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
