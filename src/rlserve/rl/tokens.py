"""Text <-> tokens helpers for trajectories: render, encode with offsets, label inserts.

These run on the caller's thread only: a Hugging Face fast tokenizer may fail when used
from several threads at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Offsets = list[tuple[int, int]]


def render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict] | None,
    add_generation_prompt: bool,
) -> str:
    """`messages` as text, by the tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text`, with no BOS/EOS added (templates write their own)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], Offsets | None]:
    """Token ids and each token's character span in `text` (None: the tokenizer cannot
    tell, e.g. a slow Python tokenizer)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return encode(tokenizer, text), None
    return list(enc["input_ids"]), [tuple(span) for span in enc["offset_mapping"]]


def decode(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """Exact text of `token_ids`: special tokens kept, no clean-up of spaces."""
    return tokenizer.decode(
        list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


def label_tokens(
    text: str, offsets: Offsets | None, count: int, contents: Sequence[str], start: int = 0
) -> list[str]:
    """Kind of each of the `count` tokens of an insert (character spans `offsets` in
    `text`): "tool" if it overlaps one of `contents` (found in order in `text[start:]`),
    else "template". All "tool" when no content can be located (no offsets, or a template
    that rewrote the content)."""
    spans, pos = [], start
    for content in contents:
        at = text.find(content, pos) if content else -1
        if at >= 0:
            spans.append((at, at + len(content)))
            pos = at + len(content)
    if offsets is None or not spans:
        return ["tool"] * count
    return [
        "tool" if any(s < e2 and s2 < e for s2, e2 in spans) else "template" for s, e in offsets
    ]
