"""The engine's call arguments normalised: one prompt (`add_request`), and the convenience
calls' prompt lists, params and score pairs (`Engine.generate`, `Engine.score`)."""

from __future__ import annotations

from collections.abc import Sequence

from rlserve._checks import is_number, is_token_ids
from rlserve.engine.admission import check_token_ids
from rlserve.sampling_params import GREEDY_TEMPERATURE_EPS, SamplingParams

# What the engine takes as a prompt: text, or token ids (the one definition in the engine).
Prompt = str | list[int]


def tokenize_prompt(prompt: Prompt, tokenizer, vocab_size: int) -> tuple[str | None, list[int]]:
    """(the text or None, the token ids) of one prompt; ValueError unless it is a string
    or a non-empty list of token ids inside the vocabulary."""
    if isinstance(prompt, str):
        token_ids = tokenizer.encode(prompt)
        text: str | None = prompt
    elif is_token_ids(prompt):
        token_ids, text = list(prompt), None
    else:
        raise ValueError(
            f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}"
        )
    if not token_ids:
        raise ValueError("the prompt is empty")
    # Text too: a tokenizer may know more tokens than the model has embeddings for.
    check_token_ids("prompt", token_ids, vocab_size)
    return text, token_ids


def prompt_list(prompts: Prompt | list[Prompt]) -> list[Prompt]:
    """One prompt (text or token ids) or a list of them, as a list."""
    if isinstance(prompts, str):
        return [prompts]
    if prompts and is_token_ids(prompts):
        return [list(prompts)]  # one prompt of token ids
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(
            "prompts must be a string, a list of token ids, or a non-empty list of those"
        )
    return list(prompts)


def params_list(
    params: SamplingParams | Sequence[SamplingParams] | None, count: int
) -> list[SamplingParams]:
    """One SamplingParams for every prompt, or one per prompt, as a list of `count`."""
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} SamplingParams for {count} prompts")
    return params


def score_pairs(
    prompt_token_ids: object, response_token_ids: object
) -> tuple[bool, list[list[int]], list[list[int]]]:
    """(single pair given, prompts, responses).

    Only token ids are taken: scoring must see exactly the tokens that were generated, and
    tokenising a prompt and a response text separately does not give them back (BPE merges
    across the boundary; contract 4)."""
    if _has_text(prompt_token_ids) or _has_text(response_token_ids):
        raise ValueError(
            "score takes token ids, not text: pass prompt_token_ids and "
            "response_token_ids as lists of ints (e.g. the token_ids a generate "
            "call returned, or engine.tokenizer.encode(text))"
        )
    single = is_token_ids(prompt_token_ids)
    prompts = [prompt_token_ids] if single else prompt_token_ids
    responses = [response_token_ids] if single else response_token_ids
    if (
        not isinstance(prompts, (list, tuple))
        or not isinstance(responses, (list, tuple))
        or not all(is_token_ids(p) and p for p in prompts)
    ):
        raise ValueError(
            "prompt_token_ids must be a non-empty list of token ids, or a list of such lists"
        )
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    for response in responses:
        if not is_token_ids(response) or not response:
            raise ValueError("each response must be a non-empty list of token ids")
    return single, [list(p) for p in prompts], [list(r) for r in responses]


def score_params(temperature: float) -> SamplingParams:
    """The params scoring at `temperature` runs with. A temperature below 1e-5 but above 0
    is refused: generation treats it as greedy and reports logprobs at T = 1, so scoring
    at it would silently score at T = 1 too, not at the T asked for."""
    if is_number(temperature) and 0 < temperature < GREEDY_TEMPERATURE_EPS:
        raise ValueError(
            f"temperature {temperature} is below {GREEDY_TEMPERATURE_EPS}: generation treats "
            "it as greedy (logprobs at T = 1); score with temperature=0 (T = 1) or >= "
            f"{GREEDY_TEMPERATURE_EPS}"
        )
    return SamplingParams(temperature=temperature, max_tokens=1)


def _has_text(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value)
    )
