"""Locate a leading reasoning block (``<think>...</think>``) in model output."""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ReasoningSplit:
    """``text[start:end]`` is reasoning (known so far); the body begins at ``body_start``,
    which is None while more text is needed to decide."""

    start: int
    end: int
    body_start: int | None


def partial_marker_start(text: str, pos: int, markers: tuple[str, ...]) -> int | None:
    """Earliest index >= ``pos`` from which the rest of ``text`` is a proper prefix of one of
    ``markers`` (a tag that may be completed by the next chunk)."""
    longest = max((len(m) for m in markers), default=0)
    for i in range(max(pos, len(text) - longest + 1), len(text)):
        tail = text[i:]
        if any(len(tail) < len(m) and m.startswith(tail) for m in markers):
            return i
    return None


def split_reasoning(text: str, think_open: bool | None, final: bool) -> ReasoningSplit:
    """Find the reasoning block.

    A block opened by ``<think>`` (after optional whitespace) always counts. ``think_open``
    says whether the prompt already opened one (chat templates of thinking models do):
    True: everything up to the first ``</think>`` is reasoning; False: no implicit block;
    None (auto): an implicit block exists only if ``</think>`` appears, so when streaming
    nothing can be released as content until it does or the text ends.
    """
    lead = len(text) - len(text.lstrip())
    rest = text[lead:]
    if rest.startswith(THINK_OPEN):
        return _block(text, lead + len(THINK_OPEN), final)
    if not final and THINK_OPEN.startswith(rest):
        return ReasoningSplit(0, 0, None)
    if think_open:
        return _block(text, 0, final)
    if think_open is False:
        return ReasoningSplit(0, 0, 0)
    close = text.find(THINK_CLOSE)
    if close != -1:
        return ReasoningSplit(0, close, close + len(THINK_CLOSE))
    return ReasoningSplit(0, 0, 0 if final else None)


def _block(text: str, start: int, final: bool) -> ReasoningSplit:
    close = text.find(THINK_CLOSE, start)
    if close != -1:
        return ReasoningSplit(start, close, close + len(THINK_CLOSE))
    if final:  # unterminated: the whole text is reasoning
        return ReasoningSplit(start, len(text), len(text))
    held = partial_marker_start(text, start, (THINK_CLOSE,))
    return ReasoningSplit(start, len(text) if held is None else held, None)
