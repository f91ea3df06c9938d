"""Forcing how an output starts: `SamplingParams.prefix_choices`.

Until the output text has become one of the choices, only tokens that keep it on the way to
some choice may be sampled; after that, sampling is free. The server builds its
`tool_choice="required"` and named-function modes on this.

Token texts are decoded one token at a time. That is exact for byte-level BPE vocabularies
(Llama 3, Qwen) as long as the choices are whole characters, which text always is.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict


class TokenTexts:
    """The text of every token, indexed for the two prefix queries the constraint needs."""

    def __init__(self, tokenizer) -> None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))],
                                       skip_special_tokens=False)
        ids_by_text: dict[str, list[int]] = defaultdict(list)
        for token_id, text in enumerate(texts):
            if text:  # an empty text would let the output stall forever
                ids_by_text[text].append(token_id)
        self._ids_by_text = dict(ids_by_text)
        self._sorted_texts = sorted(ids_by_text)

    def continuing(self, remaining: str) -> list[int]:
        """Tokens whose text is a prefix of `remaining` or starts with it."""
        ids: list[int] = []
        for end in range(1, len(remaining) + 1):
            ids += self._ids_by_text.get(remaining[:end], [])
        i = bisect_left(self._sorted_texts, remaining)
        if i < len(self._sorted_texts) and self._sorted_texts[i] == remaining:
            i += 1  # already counted as a prefix
        while i < len(self._sorted_texts) and self._sorted_texts[i].startswith(remaining):
            ids += self._ids_by_text[self._sorted_texts[i]]
            i += 1
        return ids


def allowed_token_ids(texts: TokenTexts, choices: list[str], output_text: str) -> list[int] | None:
    """The tokens that may come next, or None when sampling is free again."""
    if any(output_text.startswith(choice) for choice in choices):
        return None
    remaining = {c[len(output_text):] for c in choices if c.startswith(output_text)}
    if not remaining:
        # Only reachable if decoding token by token disagrees with decoding the whole output.
        return None
    return sorted({i for rest in remaining for i in texts.continuing(rest)})
