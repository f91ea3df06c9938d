"""Incremental detokenisation: the text of a growing output for O(1) decode work per token.

Decoding the whole output after every token costs O(n^2) over an output of n tokens. Here
each token decodes only a window of the newest tokens, and the text the window gained is
appended. The window keeps at least `CONTEXT_TOKENS` tokens before the new ones, so that
what a decoder does with the tokens before a position (strip a SentencePiece leading space at
the start, clean " ." up into ".", join one character's bytes split over tokens) happens the
same way in the window as in the whole output. Should the old part of the window decode
differently once a token is added, the whole output is decoded for that token instead: the
text is always exactly `decode(all output ids)`.
"""

from __future__ import annotations

from collections.abc import Callable

# Tokens of context before the newest: more than any decoder rule looks back (4 characters
# for transformers' clean_up_tokenization, 3 continuation bytes for UTF-8).
CONTEXT_TOKENS = 8

Decode = Callable[[list[int]], str]


class IncrementalDetokenizer:
    """`text` == decode(ids[begin:]) of the token list passed to `update` each time.

    `_window_text` is decode(ids[begin + _start : begin + _read]), and `_committed` the
    text of the first `_read` tokens: the last text that did not end in U+FFFD (a
    character whose bytes are not all there yet, which a later token may complete)."""

    def __init__(self) -> None:
        self.text = ""
        self._start = 0
        self._read = 0
        self._window_text = ""
        self._committed = ""

    def update(self, ids: list[int], begin: int, decode: Decode) -> str:
        """The text of ids[begin:] (the output tokens of `ids`), which grew since the last
        call; `decode` turns token ids into text."""
        window = decode(ids[begin + self._start :])
        if window.startswith(self._window_text):
            text = self._committed + window[len(self._window_text) :]
        else:  # a new token changed how the window's old tokens decode: decode it all
            text = decode(ids[begin:])
        self.text = text
        if not text.endswith("\ufffd"):
            self._commit(ids, begin, window, decode)
        return text

    def _commit(self, ids: list[int], begin: int, window: str, decode: Decode) -> None:
        self._committed, self._window_text = self.text, window
        self._read = len(ids) - begin
        if self._read - self._start > 2 * CONTEXT_TOKENS:  # slide the window on
            self._start = self._read - CONTEXT_TOKENS
            self._window_text = decode(ids[begin + self._start :])
