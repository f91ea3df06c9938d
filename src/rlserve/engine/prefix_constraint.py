"""Forcing how an output starts: `SamplingParams.prefix_choices`.

Until the output has become one of the choices, only tokens that keep it on the way to
some choice may be sampled; after that, sampling is free (e.g. force a tool call's
opening and let the model write the rest; the server's `tool_choice` modes use a whole-call
grammar instead, see `rlserve.tools.call_grammar`).

Matching is on bytes, not decoded text: a byte-level BPE vocabulary (Llama 3, Qwen) spells
a character outside ASCII with several one-byte tokens, each of which decodes alone to
"\\ufffd". So each token is indexed by its bytes (byte-level BPE: its piece through the
GPT-2 byte decoder; byte-fallback `<0xNN>` pieces: that byte; added tokens: their UTF-8
text; any other piece: its UTF-8 decode) and the output's bytes are matched against the
UTF-8 bytes of the choices.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_DEAD_END_CACHE_SIZE = 1024  # servers send the same tool-call prefixes again and again


class TokenTexts:
    """The bytes of every token, indexed for the two prefix queries the constraint needs."""

    def __init__(self, tokenizer, vocab_size: int | None = None) -> None:
        self._bytes = token_bytes(tokenizer, vocab_size)
        ids_by_bytes: dict[bytes, list[int]] = defaultdict(list)
        for token_id, spelling in enumerate(self._bytes):
            if spelling:  # an empty token would let the output stall forever
                ids_by_bytes[spelling].append(token_id)
        self._ids_by_bytes = dict(ids_by_bytes)
        self._sorted = sorted(ids_by_bytes)
        self._longest = max(map(len, ids_by_bytes), default=0)
        self._dead_end = lru_cache(maxsize=_DEAD_END_CACHE_SIZE)(self._find_dead_end)

    def spell(self, token_ids: Sequence[int]) -> bytes:
        """The bytes of `token_ids` one after the other (ids it does not know add none)."""
        known = len(self._bytes)
        return b"".join(self._bytes[t] for t in token_ids if t < known)

    def continuing(self, remaining: bytes) -> list[int]:
        """Tokens whose bytes are a prefix of `remaining` or start with it."""
        found = self.prefixes(remaining) + self.extensions(remaining)
        return [i for spelling in found for i in self._ids_by_bytes[spelling]]

    def prefixes(self, remaining: bytes) -> list[bytes]:
        """Token spellings that are a prefix of `remaining` (itself included)."""
        return [
            remaining[:end]
            for end in range(1, min(len(remaining), self._longest) + 1)
            if remaining[:end] in self._ids_by_bytes
        ]

    def extensions(self, remaining: bytes, first_only: bool = False) -> list[bytes]:
        """Token spellings longer than `remaining` that start with it."""
        found = []
        i = bisect_left(self._sorted, remaining)
        if i < len(self._sorted) and self._sorted[i] == remaining:
            i += 1  # a prefix, not an extension
        while i < len(self._sorted) and self._sorted[i].startswith(remaining):
            found.append(self._sorted[i])
            if first_only:
                break
            i += 1
        return found

    def dead_end(self, choices: Sequence[str]) -> str | None:
        """An output on the way to the choices after which no token may come (the
        constraint would leave nothing to sample), or None when every path can finish."""
        return self._dead_end(tuple(sorted({c.encode() for c in choices})))

    def _find_dead_end(self, choices: tuple[bytes, ...]) -> str | None:
        seen: set[bytes] = set()
        todo = [b""]
        while todo:
            output = todo.pop()
            if output in seen:
                continue
            seen.add(output)
            remaining = {c[len(output) :] for c in choices if c.startswith(output)}
            if b"" in remaining:
                continue  # a choice is complete: sampling is free from here
            steps = {spelling for rest in remaining for spelling in self.prefixes(rest)}
            if not steps and not any(self.extensions(rest, first_only=True) for rest in remaining):
                return output.decode(errors="replace")
            todo.extend(output + spelling for spelling in steps)
        return None


def allowed_token_ids(
    texts: TokenTexts, choices: Sequence[str], output: bytes | str
) -> list[int] | None:
    """The tokens that may come next after `output` (its bytes, or its text), or None when
    sampling is free again."""
    if isinstance(output, str):
        output = output.encode()
    targets = [c.encode() for c in choices]
    if any(output.startswith(t) for t in targets):
        return None
    remaining = {t[len(output) :] for t in targets if t.startswith(output)}
    if not remaining:
        # Only reachable if the output left the constraint's paths (it never does).
        return None
    return sorted({i for rest in remaining for i in texts.continuing(rest)})


def token_bytes(tokenizer, vocab_size: int | None = None) -> list[bytes]:
    """The bytes each token id stands for, for ids below `vocab_size` (a tokenizer may know
    more tokens than the model has logits for: those can never be sampled)."""
    size = len(tokenizer) if vocab_size is None else min(len(tokenizer), vocab_size)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = {i for i in tokenizer.added_tokens_decoder if i < size}
    if _is_byte_level(tokenizer):
        to_bytes = _gpt2_byte_table()
        spellings = [_from_byte_level(piece, to_bytes) for piece in pieces]
    else:
        spellings = [
            t.encode()
            for t in tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
        ]
        for i, piece in enumerate(pieces):
            match = _BYTE_FALLBACK.fullmatch(piece or "")
            if match:
                spellings[i] = bytes([int(match.group(1), 16)])
    for i in added:
        spellings[i] = (pieces[i] or "").encode()
    return spellings


def _from_byte_level(piece: str | None, to_bytes: dict[int, int]) -> bytes:
    if piece is None:  # an id the vocabulary skips
        return b""
    try:  # each character stands for one byte: map it to the character of that ordinal
        return piece.translate(to_bytes).encode("latin-1")
    except UnicodeEncodeError:  # not a byte-level piece (an added token: its text is set after)
        return piece.encode()


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in repr(backend.decoder)


@lru_cache(maxsize=1)
def _gpt2_byte_table() -> dict[int, int]:
    """GPT-2's `bytes_to_unicode` reversed: a piece character's ordinal -> its byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]  # shifted to 256, 257, ...
    chars = printable + [256 + i for i in range(len(others))]
    return dict(zip(chars, printable + others, strict=True))
