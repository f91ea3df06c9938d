"""Tokens the loop inserts between assistant turns, taken from the chat template.

Contract 4: sampled tokens are never re-tokenised. After an assistant turn the stream is
`prompt + sampled`; the tool turn (end of the assistant turn, tool messages, next
generation prompt) is whatever the chat template renders for the conversation with the
tool results, minus what it renders for the history so far. The history renders the
assistant turn from its exact sampled text (`template_messages`), so for a template that
only wraps content the two agree, and the difference is computed, best first:

1. tokens: the fresh tokenisation of the new rendering starts with the stream itself;
   the insert is the rest of those tokens.
2. text: the new rendering starts with the stream's decoded text (the policy sampled a
   non-canonical tokenisation); the insert is the rest of the text, tokenised alone.
   Every boundary this loop creates follows a special token or a stop token, so this
   equals the in-context tokenisation for templates of the ChatML family.
3. fallback (`Insert.exact` False): the rendering does not extend the stream, e.g. the
   policy ended its turn with a different stop token than the template writes
   (`<|endoftext|>` instead of `<|im_end|>`), or the template rewrites assistant content
   (drops or reformats reasoning). The insert is then the new rendering minus the
   rendering of the history (plus the whitespace the template writes after the stop
   token, if the policy's stop token is the template's), appended after the sampled
   tokens as they are: the stream keeps what the policy saw and sampled, and a fresh
   render of `messages` differs from it exactly where the template rewrote the turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlserve.rl.tokens import decode, encode, encode_with_offsets, label_tokens, render


class TemplateError(ValueError):
    """The chat template cannot extend the conversation by the new messages."""


@dataclass
class Insert:
    """Tokens to append (loss mask 0) with the kind of each ("tool" / "template")."""

    token_ids: list[int]
    kinds: list[str]
    exact: bool = True


def first_prompt_ids(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None
) -> list[int]:
    """The stream a trajectory starts from: the rendered conversation, ready for the
    assistant (the same ids as `Engine.render_chat`)."""
    return encode(tokenizer, render(tokenizer, messages, tools, add_generation_prompt=True))


def tool_turn_insert(
    tokenizer: Any,
    stream_ids: list[int],
    history: list[dict[str, Any]],
    new_messages: list[dict[str, Any]],
    tools: list[dict] | None,
) -> Insert:
    """Tokens that turn `stream_ids` (the rendered `history`, ending in an assistant turn
    as sampled) into the rendering of `history + new_messages` with a generation prompt."""
    full = render(tokenizer, history + new_messages, tools, add_generation_prompt=True)
    contents = [m.get("content") if isinstance(m.get("content"), str) else "" for m in new_messages]
    ids, offsets = encode_with_offsets(tokenizer, full)
    n = len(stream_ids)
    if len(ids) > n and ids[:n] == stream_ids:
        start = offsets[n][0] if offsets is not None else 0
        tail = offsets[n:] if offsets is not None else None
        return Insert(ids[n:], label_tokens(full, tail, len(ids) - n, contents, start))
    stream_text = decode(tokenizer, stream_ids)
    if full.startswith(stream_text):
        return _insert_text(tokenizer, full[len(stream_text) :], contents, exact=True)
    base = render(tokenizer, history, tools, add_generation_prompt=False)
    if not full.startswith(base):
        raise TemplateError(
            "the chat template renders the conversation with the tool "
            "results differently from the conversation before them"
        )
    closing = _closing(tokenizer, stream_ids, base)
    return _insert_text(tokenizer, closing + full[len(base) :], contents, exact=False)


def _closing(tokenizer: Any, stream_ids: list[int], base: str) -> str:
    """The whitespace the template writes after the token that ended the turn (the
    newline after `<|im_end|>`), when `base` ends with that token and whitespace."""
    last = decode(tokenizer, stream_ids[-1:])
    at = base.rfind(last) if last else -1
    tail = base[at + len(last) :] if at >= 0 else ""
    return tail if not tail.strip() else ""


def _insert_text(tokenizer: Any, text: str, contents: list[str], exact: bool) -> Insert:
    if not text:
        raise TemplateError("the chat template renders nothing for the tool messages")
    ids, offsets = encode_with_offsets(tokenizer, text)
    return Insert(ids, label_tokens(text, offsets, len(ids), contents), exact)
