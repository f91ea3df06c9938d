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

    def __init__(self, tokenizer, vocab_size: int | None = None) -> None:
        # Tokenizers may know more tokens than the model has logits for: those can never
        # be sampled, so they are never offered.
        size = len(tokenizer) if vocab_size is None else min(len(tokenizer), vocab_size)
        texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
        ids_by_text: dict[str, list[int]] = defaultdict(list)
        for token_id, text in enumerate(texts):
            if text:  # an empty text would let the output stall forever
                ids_by_text[text].append(token_id)
        self._ids_by_text = dict(ids_by_text)
        self._sorted_texts = sorted(ids_by_text)
        self._longest = max(map(len, ids_by_text), default=0)
        self.dead_ends: dict[tuple[str, ...], str | None] = {}  # cache of `dead_end`

    def continuing(self, remaining: str) -> list[int]:
        """Tokens whose text is a prefix of `remaining` or starts with it."""
        texts = self.prefixes(remaining) + self.extensions(remaining)
        return [i for text in texts for i in self._ids_by_text[text]]

    def prefixes(self, remaining: str) -> list[str]:
        """Token texts that are a prefix of `remaining` (itself included)."""
        return [remaining[:end] for end in range(1, min(len(remaining), self._longest) + 1)
                if remaining[:end] in self._ids_by_text]

    def extensions(self, remaining: str, first_only: bool = False) -> list[str]:
        """Token texts longer than `remaining` that start with it."""
        found = []
        i = bisect_left(self._sorted_texts, remaining)
        if i < len(self._sorted_texts) and self._sorted_texts[i] == remaining:
            i += 1  # a prefix, not an extension
        while i < len(self._sorted_texts) and self._sorted_texts[i].startswith(remaining):
            found.append(self._sorted_texts[i])
            if first_only:
                break
            i += 1
        return found


def allowed_token_ids(texts: TokenTexts, choices: list[str], output_text: str) -> list[int] | None:
    """The tokens that may come next, or None when sampling is free again."""
    if any(output_text.startswith(choice) for choice in choices):
        return None
    remaining = {c[len(output_text):] for c in choices if c.startswith(output_text)}
    if not remaining:
        # Only reachable if decoding token by token disagrees with decoding the whole output.
        return None
    return sorted({i for rest in remaining for i in texts.continuing(rest)})


def dead_end(texts: TokenTexts, choices: list[str]) -> str | None:
    """An output text on the way to the choices after which no token may come (the
    constraint would leave nothing to sample), or None when every path can finish.
    Cached per set of choices: servers send the same tool-call prefixes again and again."""
    key = tuple(sorted(set(choices)))
    if key not in texts.dead_ends:
        if len(texts.dead_ends) >= 1024:
            texts.dead_ends.clear()
        texts.dead_ends[key] = _find_dead_end(texts, key)
    return texts.dead_ends[key]


def _find_dead_end(texts: TokenTexts, choices: tuple[str, ...]) -> str | None:
    seen: set[str] = set()
    todo = [""]
    while todo:
        output = todo.pop()
        if output in seen:
            continue
        seen.add(output)
        remaining = {c[len(output):] for c in choices if c.startswith(output)}
        if "" in remaining:
            continue  # a choice is complete: sampling is free from here
        steps = {text for rest in remaining for text in texts.prefixes(rest)}
        if not steps and not any(texts.extensions(rest, first_only=True) for rest in remaining):
            return output
        todo.extend(output + text for text in steps)
    return None
