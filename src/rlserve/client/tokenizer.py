"""Hugging Face tokenizer helpers. `transformers` is imported only when one is used."""

from __future__ import annotations

import re
from typing import Any

# Gemma-2 instruction-tuned checkpoints (google/gemma-2-2b-it, -9b-it, -27b-it).
_GEMMA2_INSTRUCT = re.compile(r"gemma-2-\d+b-it\b", re.IGNORECASE)
_GEMMA2_END_OF_TURN = "<end_of_turn>"


def hf_tokenizer(
    name_or_path: str, correct_pad_token: bool = True, correct_gemma2: bool = True, **kwargs: Any
) -> Any:
    """Load a tokenizer with `AutoTokenizer`; a missing pad token is set to EOS.

    `correct_gemma2`: Gemma-2 instruct tokenizers declare `<eos>` as EOS, but their chat
    turns end with `<end_of_turn>`, so generation and EOS masks would miss the real end;
    for a `gemma-2-<N>b-it` checkpoint `<end_of_turn>` becomes the EOS token (what the
    NexRL helper this mirrors does). Extra keyword arguments (e.g. `trust_remote_code=True`)
    go to `from_pretrained`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if correct_pad_token and tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if correct_gemma2 and _GEMMA2_INSTRUCT.search(str(name_or_path)):
        _end_turns_with_eos(tokenizer)
    return tokenizer


def _end_turns_with_eos(tokenizer: Any) -> None:
    token_id = tokenizer.convert_tokens_to_ids(_GEMMA2_END_OF_TURN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return  # not a real Gemma-2 vocabulary: nothing to correct
    tokenizer.eos_token = _GEMMA2_END_OF_TURN


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
