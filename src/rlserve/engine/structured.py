"""Structured outputs: a grammar (JSON schema, regex, choice, Lark/GBNF) constrains sampling.

The grammar engine is llguidance (chosen over xgrammar in bench/structured.py's notes: no
dependencies, ~10x faster compiles, ~0.2 ms per token mask on a 151k vocabulary).
`StructuredOutput` says what the output must match (vLLM's `StructuredOutputsParams`
kinds); `GrammarCompiler` turns it into one `GrammarMatcher` per sequence, which gives the
next-token mask and follows the tokens sampled.
"""

from __future__ import annotations

import json as json_module
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

import llguidance
import llguidance.hf
import numpy as np
import torch

from rlserve._checks import ParamError
from rlserve.engine.sequence import Sequence

FIELD = "structured"  # the SamplingParams field; the server names its request fields
KINDS = ("json", "regex", "choice", "grammar", "json_object")
_CACHE_SIZE = 256  # RL batches send the same few schemas again and again


@dataclass(frozen=True)
class StructuredOutput:
    """What the output must match: exactly one of a JSON schema (`json`, a dict or its
    JSON text), a `regex`, one of the strings in `choice`, a Lark or GBNF `grammar`, or
    any JSON object (`json_object`). `any_whitespace` lets JSON have free whitespace
    between tokens (vLLM's default; its `disable_any_whitespace` is the opposite)."""

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False
    any_whitespace: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.json_object, bool):
            raise ParamError(
                FIELD, f"{FIELD}: json_object must be a boolean, got {self.json_object!r}"
            )
        given = [k for k in KINDS[:-1] if getattr(self, k) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ParamError(
                FIELD,
                f"{FIELD}: needs exactly one kind of constraint ({', '.join(KINDS)}), "
                f"got {', '.join(given) if given else 'none'}",
            )
        self._check_types()
        if isinstance(self.choice, list):
            object.__setattr__(self, "choice", tuple(self.choice))  # frozen means hashable

    def _check_types(self) -> None:
        if self.json is not None and not isinstance(self.json, (dict, str)):
            raise ParamError(
                FIELD, f"{FIELD}: json must be a JSON schema object, got {self.json!r}"
            )
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ParamError(
                    FIELD, f"{FIELD}: {name} must be a non-empty string, got {value!r}"
                )
        if self.choice is not None and (
            not isinstance(self.choice, (list, tuple))
            or not self.choice
            or not all(isinstance(c, str) for c in self.choice)
        ):
            raise ParamError(
                FIELD, f"{FIELD}: choice must be a non-empty list of strings, got {self.choice!r}"
            )

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    def key(self) -> tuple[str, str, bool]:
        """(kind, text, any_whitespace): equal constraints share compiled grammars (keys are
        not sorted: a schema's property order is the order the output must follow)."""
        spec: Any = getattr(self, self.kind)
        if self.kind == "json" and isinstance(spec, str):
            spec = _parse_schema(spec)
        text = spec if isinstance(spec, str) else json_module.dumps(spec)
        return self.kind, text, self.any_whitespace


def check_structured(structured: StructuredOutput) -> None:
    """ParamError naming `structured_outputs` when the constraint does not compile."""
    error = _validation_error(structured.key())
    if error:
        raise ParamError(FIELD, f"{FIELD}: invalid {structured.kind}: {error}")


def _parse_schema(text: str) -> dict:
    try:
        schema = json_module.loads(text)
    except ValueError as exc:
        raise ParamError(FIELD, f"{FIELD}: json is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ParamError(FIELD, f"{FIELD}: json must be a JSON schema object, got {text!r}")
    return schema


@lru_cache(maxsize=_CACHE_SIZE)
def _serialized(key: tuple[str, str, bool]) -> str:
    """The llguidance grammar for a constraint (raises ValueError if it cannot be built)."""
    kind, text, any_whitespace = key
    options = {"whitespace_flexible": any_whitespace}
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=options)
    if kind == "json":
        return llguidance.LLMatcher.grammar_from_json_schema(text, defaults=options)
    if kind == "choice":
        return llguidance.grammar_from("choice", json_module.loads(text))
    return llguidance.grammar_from(kind, text)


@lru_cache(maxsize=_CACHE_SIZE)
def _validation_error(key: tuple[str, str, bool]) -> str:
    try:
        grammar = _serialized(key)
    except Exception as exc:  # llguidance raises plain Exceptions for GBNF errors
        return str(exc)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error else ""


class GrammarMatcher:
    """One sequence's position in its grammar: the mask of the tokens that may come next,
    advanced by every token sampled. `num_consumed` counts the output tokens it has seen."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher
        self.num_consumed = 0

    def advance(self, token_id: int) -> None:
        """Follow one sampled (non-EOS) token; ValueError if the grammar refuses it."""
        if not self.matcher.consume_token(token_id):
            raise ValueError(f"{FIELD}: token {token_id} breaks the grammar: {self.error()}")
        self.num_consumed += 1

    def error(self) -> str:
        return self.matcher.get_error()

    @property
    def is_accepting(self) -> bool:
        """The output so far is complete (EOS may come)."""
        return self.matcher.is_accepting()

    @property
    def is_stopped(self) -> bool:
        """Complete, and nothing but EOS can follow."""
        return self.matcher.is_stopped()


class GrammarCompiler:
    """Per engine: the tokenizer's index for llguidance (built on first use: ~1 s for a
    151k vocabulary), a cache of compiled grammars, and each constrained sequence's
    matcher (a copy of its compiled grammar; it dies with its sequence, aborts included)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int]) -> None:
        self.hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._templates = lru_cache(maxsize=_CACHE_SIZE)(self._compile)
        self._matchers: WeakKeyDictionary[Sequence, GrammarMatcher] = WeakKeyDictionary()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            size = max(self.vocab_size, len(self.hf_tokenizer))
            self._tokenizer = llguidance.hf.from_tokenizer(
                self.hf_tokenizer, size, eos_token=self.eos_token_ids or None
            )
        return self._tokenizer

    def matcher(self, structured: StructuredOutput) -> GrammarMatcher:
        """A fresh matcher at the start of `structured`'s grammar."""
        return GrammarMatcher(self._templates(structured.key()).deep_copy())

    def running(self, seq: Sequence) -> GrammarMatcher | None:
        """The matcher `follow` gave `seq`, if any."""
        return self._matchers.get(seq)

    def follow(self, seq: Sequence, structured: StructuredOutput) -> GrammarMatcher:
        """`seq`'s matcher, caught up with its output tokens: forks start fresh, and a
        preempted sequence keeps its tokens, so its matcher stays right."""
        matcher = self._matchers.get(seq)
        output = seq.token_ids[seq.num_prompt_tokens :]
        if matcher is None or matcher.num_consumed > len(output):
            matcher = self._matchers[seq] = self.matcher(structured)
        for token_id in output[matcher.num_consumed :]:
            matcher.advance(token_id)
        return matcher

    def _compile(self, key: tuple[str, str, bool]) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self.tokenizer, _serialized(key), log_level=0)
        if matcher.is_error():
            raise ValueError(f"{FIELD}: the grammar does not compile: {matcher.get_error()}")
        return matcher

    def masks(
        self, matchers: list[GrammarMatcher], allow_eos: list[bool], device: torch.device
    ) -> torch.Tensor:
        """bool [len(matchers), vocab_size] on `device`: True where a token may come next.
        EOS is allowed only where `allow_eos` says so and the grammar may end there."""
        words = (self.tokenizer.vocab_size + 31) // 32
        bits = np.zeros((len(matchers), words), dtype=np.int32)
        for row, m in enumerate(matchers):
            m.matcher.unsafe_compute_mask_ptr(bits[row].ctypes.data, words * 4)
        unpacked = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")
        mask = torch.from_numpy(unpacked[:, : self.vocab_size].astype(bool))
        eos = [t for t in self.eos_token_ids if t < self.vocab_size]
        if eos:
            mask[:, eos] = False
            for row, m in enumerate(matchers):
                if allow_eos[row] and m.is_accepting:
                    mask[row, eos] = True
        return mask.to(device)
