"""Hugging Face tokenizer helpers. `transformers` is imported only when one is used."""

from __future__ import annotations

from typing import Any


def hf_tokenizer(name_or_path: str, correct_pad_token: bool = True, **kwargs: Any) -> Any:
    """Load a tokenizer with `AutoTokenizer`; a missing pad token is set to EOS.

    Extra keyword arguments (e.g. `trust_remote_code=True`) go to `from_pretrained`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if correct_pad_token and tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tokenize: bool = False,
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> str | list[int]:
    """Render `messages` (and `tools`) with the tokenizer's chat template.

    Returns the prompt text, or its token ids when `tokenize=True`.
    """
    rendered = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        tokenize=tokenize,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    if tokenize and not isinstance(rendered, list):
        rendered = rendered["input_ids"]  # transformers 5 returns a BatchEncoding
    return rendered
