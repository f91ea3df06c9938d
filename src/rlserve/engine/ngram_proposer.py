"""Prompt lookup (n-gram) proposals: the tokens that followed the last n tokens before.

For n from `prompt_lookup_max` down to `prompt_lookup_min`, the last n tokens of prompt +
output are searched for earlier in the same sequence; at the first n that occurs, the
tokens that followed its most recent earlier occurrence (one that k tokens follow, if
any) are the guesses. vLLM's
NgramProposer also takes the longest n but its earliest occurrence; the most recent one
follows edits made since (an edited copy that is being repeated again). Stateless: the
search runs in C (`bytes.rfind` over the int32 token bytes), microseconds per sequence.
"""

from __future__ import annotations

from array import array

from rlserve.engine.proposer import ProposalInput

_WIDTH = array("i").itemsize  # bytes per token id


class NgramProposer:
    """Implements `Proposer` with no model and no state."""

    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        if not 1 <= prompt_lookup_min <= prompt_lookup_max:
            raise ValueError(
                "need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                f"{prompt_lookup_min}, {prompt_lookup_max}"
            )
        self.min_n = prompt_lookup_min
        self.max_n = prompt_lookup_max

    def propose(self, inputs: list[ProposalInput]) -> list[list[int]]:
        return [lookup(i.token_ids, self.min_n, self.max_n, i.max_tokens) for i in inputs]

    def release(self, key: tuple[str, int]) -> None:
        return None

    def reset(self) -> None:
        return None


def lookup(token_ids: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of the longest
    suffix of `token_ids` with min_n <= length <= max_n; [] when none occurs."""
    total = len(token_ids)
    if k < 1 or total <= min_n:
        return []
    data = array("i", token_ids).tobytes()
    # Prefer an occurrence that k tokens follow (in a loop of period p < k the most
    # recent one has only p); else any that ends before the last token.
    ends = ((total - k) * _WIDTH, (total - 1) * _WIDTH)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        needle = data[(total - n) * _WIDTH :]
        for end in ends:
            at = _rfind_aligned(data, needle, end)
            if at >= 0:
                start = at // _WIDTH + n
                return token_ids[start : start + k]
    return []


def _rfind_aligned(data: bytes, needle: bytes, end: int) -> int:
    """The last byte offset < end - len(needle) + 1 where `needle` starts on a token
    boundary, or -1."""
    at = data.rfind(needle, 0, end)
    while at >= 0 and at % _WIDTH:
        at = data.rfind(needle, 0, at + len(needle) - 1)
    return at
