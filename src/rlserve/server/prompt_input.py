"""Text prompts -> token ids in the HTTP handler, off the event loop and the engine thread.

A prompt that cannot fit the context is refused before it is tokenised, from its size
alone: no token stands for more than `max_bytes_per_token` bytes of text, so a text of
more than (max_model_len - 1) x that many bytes has at least max_model_len tokens. The bound
is only used where it is sound: for tokenizers that can drop or merge away input (a
whitespace pre-tokenizer, an `[UNK]` for a whole word, ...) there is none, and such texts
are tokenised in full (still off both threads, and limited by the request size).
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from typing import TYPE_CHECKING, Any

from rlserve.server.errors import APIError

if TYPE_CHECKING:
    from rlserve.engine.call_args import Prompt

# Unicode normalisation can shrink text (NFKC maps the 4-byte U+1D400 to "A"; NFC folds
# three 3-byte jamo into one syllable); 4x covers every such mapping.
_NORMALISER_SHRINK = 4
_SHRINKING_NORMALISERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"}
_KEEPING_NORMALISERS = {"Prepend"}  # only add text
_KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts"}

_bounds: weakref.WeakKeyDictionary[Any, int | None] = weakref.WeakKeyDictionary()
_bounds_lock = threading.Lock()


def _normaliser_shrink(spec: dict[str, Any] | None) -> int | None:
    """How many times a normaliser can shrink text (None: without limit)."""
    if spec is None:
        return 1
    kind = spec.get("type")
    if kind == "Sequence":
        factor = 1
        for part in spec.get("normalizers", []):
            part_factor = _normaliser_shrink(part)
            if part_factor is None:
                return None
            factor *= part_factor
        return factor
    if kind in _SHRINKING_NORMALISERS:
        return _NORMALISER_SHRINK
    if kind in _KEEPING_NORMALISERS:
        return 1
    if kind == "Replace":
        pattern, content = spec.get("pattern", {}).get("String"), spec.get("content", "")
        if pattern and content:
            return max(1, -(-len(pattern.encode()) // len(content.encode())))
    return None  # Strip, StripAccents, BertNormalizer, regex replaces: can drop text


def _pre_tokenizer_keeps_text(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_pre_tokenizer_keeps_text(p) for p in spec.get("pretokenizers", []))
    if kind in ("Split", "Punctuation"):
        return spec.get("behavior") != "Removed"
    return kind in _KEEPING_PRE_TOKENIZERS  # Whitespace & co. drop the spaces


def _byte_level(spec: dict[str, Any] | None) -> bool:
    """Whether the pre-tokenizer maps input bytes to byte symbols (alone or in a Sequence)."""
    if spec is None:
        return False
    if spec.get("type") == "Sequence":
        return any(_byte_level(p) for p in spec.get("pretokenizers", []))
    return spec.get("type") == "ByteLevel"


def _model_keeps_text(spec: dict[str, Any], byte_level: bool) -> bool:
    """Whether every input byte becomes part of some token (no unknown-word token or
    skipped characters)."""
    kind = spec.get("type")
    if kind == "BPE":
        return (byte_level or bool(spec.get("byte_fallback"))) and not spec.get("fuse_unk")
    if kind == "Unigram":
        return bool(spec.get("byte_fallback"))
    return False  # WordPiece / WordLevel: one [UNK] can stand for a whole word


def max_bytes_per_token(tokenizer: Any) -> int | None:
    """The most bytes of input text one token can stand for, or None when no sound bound
    exists (slow tokenizers, tokenizers that can drop text). Computed once per tokenizer."""
    with _bounds_lock:
        if tokenizer in _bounds:
            return _bounds[tokenizer]
    bound = _compute_bound(tokenizer)
    with _bounds_lock:
        _bounds[tokenizer] = bound
    return bound


def _compute_bound(tokenizer: Any) -> int | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    shrink = _normaliser_shrink(spec.get("normalizer"))
    pre = spec.get("pre_tokenizer")
    if shrink is None or not _pre_tokenizer_keeps_text(pre):
        return None
    if not _model_keeps_text(spec.get("model") or {}, _byte_level(pre)):
        return None
    # A token's vocabulary string is never shorter in UTF-8 than the input it covers:
    # byte-level symbols and "▁" take 2-3 bytes for one input byte, "<0x0A>" six.
    longest = max(len(token.encode("utf-8")) for token in tokenizer.get_vocab())
    return longest * shrink


def check_text_fits(text: str, bound: int | None, max_model_len: int, param: str) -> None:
    """400 for a text that has at least `max_model_len` tokens, judged from its size."""
    if bound is None:
        return
    limit = (max_model_len - 1) * bound  # bytes that might still be max_model_len - 1 tokens
    if 4 * len(text) <= limit:
        return  # even at 4 bytes per character it is within the limit
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise APIError(
            400,
            f"{param} is too long for the model's context of {max_model_len} tokens: "
            f"its {size} bytes of text make at least {-(-size // bound)} tokens",
            param=param,
        )


def request_prompts(value: Any, param: str) -> tuple[list[Prompt], bool]:
    """A request's prompt field (text, token ids, or a list of either) as engine prompts,
    and whether it was a list of prompts."""
    if isinstance(value, str):
        return [value], False
    if not value:
        raise APIError(400, f"{param} must not be empty", param=param)
    if all(isinstance(t, int) for t in value):
        return [list(value)], False
    return list(value), True


def _encode_all(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    return [tokenizer.encode(t, add_special_tokens=add_special_tokens) for t in texts]


async def tokenize_prompts(
    tokenizer: Any, prompts: list[Prompt], max_model_len: int, param: str = "prompt"
) -> list[Prompt]:
    """Token ids of every prompt (text is tokenised as the engine tokenises prompts), in a
    worker thread; 400 for a text that cannot fit the context, before tokenising it."""
    texts = [p for p in prompts if isinstance(p, str)]
    if not texts:
        return [list(p) for p in prompts]
    bound = await asyncio.to_thread(max_bytes_per_token, tokenizer)
    for text in texts:
        check_text_fits(text, bound, max_model_len, param)
    encoded = iter(await asyncio.to_thread(_encode_all, tokenizer, texts, True))
    return [next(encoded) if isinstance(p, str) else list(p) for p in prompts]


async def tokenize_chat_text(tokenizer: Any, text: str, max_model_len: int) -> list[int]:
    """Token ids of a rendered chat prompt (no special tokens added: the template has
    them), in a worker thread; 400 when it cannot fit the context."""
    bound = await asyncio.to_thread(max_bytes_per_token, tokenizer)
    check_text_fits(text, bound, max_model_len, "messages")
    return (await asyncio.to_thread(_encode_all, tokenizer, [text], False))[0]
