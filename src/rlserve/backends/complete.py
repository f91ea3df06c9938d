"""Text, token ids or chat messages in, completions out: written once, for every backend.

`complete` turns each prompt into token ids (`prompt_token_ids`), expands `params.n` into
n requests of n = 1 (what `InferenceBackend.generate` takes), runs them together and
decodes the sampled tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rlserve._checks import is_token_ids
from rlserve.backends.base import InferenceBackend, Request, Sample
from rlserve.sampling_params import SamplingParams

# Text, token ids, or a conversation (a list of chat message dicts).
Prompt = str | list[int] | list[dict[str, Any]]

_SEED_STRIDE = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio): spreads sample seeds
_SEED_MASK = (1 << 63) - 1


@dataclass
class Completion:
    """One sampled completion of one prompt; `error` set (and nothing sampled) when the
    request failed outside the model. `text` is decoded with skip_special_tokens=True."""

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    weight_versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None


def prompt_token_ids(tokenizer: Any, prompt: Prompt, tools: list[dict] | None = None) -> list[int]:
    """The token ids of one prompt. Text is tokenized as `Engine.generate` does (with the
    tokenizer's special tokens); messages are rendered by the chat template with the
    generation prompt (offering `tools`), then tokenized without adding special tokens;
    token ids are taken as they are. ValueError naming `prompts` for anything else."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompts: a text prompt is empty")
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, (list, tuple)) and prompt and is_token_ids(prompt):
        ids = list(prompt)
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        text = tokenizer.apply_chat_template(
            list(prompt), tools=tools, tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        raise ValueError(
            "prompts: each prompt must be a non-empty string, a non-empty list of token ids "
            f"or a non-empty list of chat message dicts, got {prompt!r:.80}"
        )
    if not ids:
        raise ValueError(f"prompts: the prompt {prompt!r:.80} tokenizes to nothing")
    return ids


def sample_seed(seed: int | None, index: int) -> int | None:
    """The seed of sample `index` of a request seeded with `seed`: sample 0 keeps `seed`
    (so n = 1 is unchanged), sample i uses (seed + i * 0x9E3779B97F4A7C15) mod 2**63, so
    the samples differ from each other and are the same on every run."""
    if seed is None or index == 0:
        return seed
    return (seed + index * _SEED_STRIDE) & _SEED_MASK


def complete(
    backend: InferenceBackend,
    prompts: list[Prompt],
    params: SamplingParams | None = None,
    tools: list[dict] | None = None,
) -> list[list[Completion]]:
    """`params.n` completions of every prompt (in order), generated together on `backend`."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(
            "prompts must be a non-empty list of prompts (strings, token-id lists or "
            f"message lists), got {prompts!r:.80}"
        )
    params = SamplingParams() if params is None else params
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
    ids = [prompt_token_ids(backend.tokenizer, p, tools) for p in prompts]
    requests: list[Request] = [
        (prompt, dataclasses.replace(params, n=1, seed=sample_seed(params.seed, i)))
        for prompt in ids
        for i in range(params.n)
    ]
    samples: dict[int, Sample] = {}
    backend.generate(requests, samples.__setitem__)
    completions = [
        completion_of_sample(backend.tokenizer, prompt, samples.get(k))
        for k, (prompt, _) in enumerate(requests)
    ]
    return [completions[j * params.n : (j + 1) * params.n] for j in range(len(ids))]


def completion_of_sample(tokenizer: Any, prompt: list[int], sample: Sample | None) -> Completion:
    """The Completion of `prompt` that a backend's `sample` makes (None: a failed one)."""
    if sample is None:  # a backend that broke its contract: say so, lose nothing else
        sample = Sample.failed("the backend reported no sample for this request")
    return Completion(
        prompt_token_ids=prompt,
        token_ids=list(sample.token_ids),
        text=tokenizer.decode(sample.token_ids, skip_special_tokens=True),
        logprobs=list(sample.logprobs),
        weight_versions=list(sample.weight_versions),
        finish_reason=sample.finish_reason,
        stop_reason=sample.stop_reason,
        error=sample.error,
    )
