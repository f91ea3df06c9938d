"""Pull token ids and logprobs for training out of OpenAI/vLLM/rlserve responses.

Every client response dict gets one extra key, `rlserve_train`:

    {"prompt_tokens": [...], "response_tokens": [...], "response_logprobs": [...],
     "finish_reason": "stop", "samples": [<the same keys, one dict per choice>]}

The top-level lists describe the first choice; `samples` holds every choice (n > 1,
several prompts). A list is `None` when the server returned nothing to build it from.
Sources, best first: vLLM's `return_token_ids` fields (`token_ids`, `prompt_token_ids`),
then logprob tokens rendered as `token_id:N` (`return_tokens_as_token_ids`). Prompt ids
the server leaves out come from the call (token-id prompts) or, when the client has a
tokenizer, from the client's own tokenisation of the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlserve._checks import is_token_ids

TRAIN_KEY = "rlserve_train"
TOKEN_ID_PREFIX = "token_id:"


def parse_token_id(token: Any) -> int | None:
    """`"token_id:123"` -> 123; anything else -> None."""
    if not isinstance(token, str) or not token.startswith(TOKEN_ID_PREFIX):
        return None
    try:
        return int(token[len(TOKEN_ID_PREFIX) :])
    except ValueError:
        return None


def _parse_all(tokens: list[Any]) -> list[int] | None:
    ids = [parse_token_id(t) for t in tokens]
    if any(i is None for i in ids):
        return None
    return ids  # type: ignore[return-value]


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and is_token_ids(value):
        return list(value)
    return None


def _suffix(values: list[Any] | None, length: int | None) -> list[Any] | None:
    """The last `length` items: with `echo` the logprobs also cover the prompt."""
    if values is None or length is None or len(values) <= length:
        return values
    return values[len(values) - length :]


def _sample(
    index: int,
    prompt_tokens: list[int] | None,
    tokens: list[int] | None,
    logprobs: list[Any] | None,
    finish_reason: Any,
) -> dict[str, Any]:
    return {
        "index": index,
        "prompt_tokens": prompt_tokens,
        "response_tokens": tokens,
        "response_logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def _completion_sample(
    choice: dict[str, Any], fallback_prompt: list[int] | None, echo: bool
) -> dict[str, Any]:
    prompt = _int_list(choice.get("prompt_token_ids")) or fallback_prompt
    tokens = _int_list(choice.get("token_ids"))
    lp = choice.get("logprobs") or {}
    logprobs = lp.get("token_logprobs")
    if tokens is None and lp.get("tokens") is not None:
        tokens = _parse_all(lp["tokens"])
        if tokens is not None and echo and prompt is not None:
            tokens = tokens[len(prompt) :]
    if tokens is not None:
        logprobs = _suffix(logprobs, len(tokens))
    elif echo and logprobs is not None and prompt is not None:
        logprobs = logprobs[len(prompt) :]
    return _sample(choice.get("index", 0), prompt, tokens, logprobs, choice.get("finish_reason"))


def _chat_sample(choice: dict[str, Any], prompt: list[int] | None) -> dict[str, Any]:
    tokens = _int_list(choice.get("token_ids"))
    content = (choice.get("logprobs") or {}).get("content")
    logprobs = None
    if isinstance(content, list):
        logprobs = [entry.get("logprob") for entry in content]
        if tokens is None:
            tokens = _parse_all([entry.get("token") for entry in content])
    return _sample(choice.get("index", 0), prompt, tokens, logprobs, choice.get("finish_reason"))


def _bundle(samples: list[dict[str, Any]]) -> dict[str, Any]:
    first = samples[0] if samples else _sample(0, None, None, None, None)
    train = {k: first[k] for k in ("prompt_tokens", "response_tokens", "response_logprobs")}
    train["finish_reason"] = first["finish_reason"]
    train["samples"] = samples
    return train


def completion_training_data(
    response: dict[str, Any],
    *,
    echo: bool = False,
    per_prompt: Sequence[list[int] | None] | None = None,
    n: int = 1,
) -> dict[str, Any]:
    """Training data from a `/v1/completions` response.

    `per_prompt[i]` gives the ids of prompt `i` for its choices that carry no
    `prompt_token_ids` (e.g. a token-id prompt the caller already has); prompt `i`'s `n`
    choices have indices `i * n ... i * n + n - 1` (as vLLM numbers them). `echo` says
    the logprobs cover the prompt too.
    """
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))

    def fallback(choice: dict[str, Any]) -> list[int] | None:
        position = choice.get("index", 0) // max(n, 1)
        if per_prompt is not None and isinstance(position, int) and position < len(per_prompt):
            return per_prompt[position]
        return None

    return _bundle([_completion_sample(c, fallback(c), echo) for c in choices])


def lacks_prompt_tokens(kind: str, response: dict[str, Any]) -> bool:
    """Whether a completion/chat response leaves some prompt's token ids out."""
    if kind == "chat":
        return _int_list(response.get("prompt_token_ids")) is None
    choices = response.get("choices") or []
    return any(_int_list(c.get("prompt_token_ids")) is None for c in choices)


def chat_training_data(
    response: dict[str, Any], prompt_tokens: list[int] | None = None
) -> dict[str, Any]:
    """Training data from a `/v1/chat/completions` response."""
    prompt = _int_list(response.get("prompt_token_ids")) or prompt_tokens
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    return _bundle([_chat_sample(c, prompt) for c in choices])


def generate_training_data(response: dict[str, Any]) -> dict[str, Any]:
    """Training data from an rlserve `/generate` response (single or grouped)."""
    results = response.get("results")
    items = results if isinstance(results, list) else [response]
    samples = [
        _sample(
            i,
            _int_list(item.get("prompt_ids")),
            _int_list(item.get("completion_ids")),
            item.get("logprobs"),
            item.get("finish_reason"),
        )
        for i, item in enumerate(items)
    ]
    return _bundle(samples)
