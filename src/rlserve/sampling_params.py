"""Sampling parameters for one request, validated once on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlserve._checks import ParamError, check_bool, check_int, check_number

if TYPE_CHECKING:
    from rlserve.engine.structured import StructuredOutput

# Temperatures below this are greedy, as in vLLM (`_SAMPLING_EPS`): logits / T would
# overflow fp32 (T = 1e-40 is a denormal whose reciprocal is inf) and sampling would
# fail for the whole batch.
GREEDY_TEMPERATURE_EPS = 1e-5


@dataclass
class SamplingParams:
    """How to sample completions for one prompt (names follow vLLM).

    temperature 0 means greedy; so does any temperature below 1e-5 (vLLM's `_SAMPLING_EPS`),
    which is stored as 0.0. Like every greedy request its logprobs are then reported at
    T = 1, as vLLM does (it replaces such temperatures by 1 before computing logprobs):
    log_softmax(logits / 1e-6) is a one-hot no trainer wants. `Engine.score` refuses such
    temperatures rather than score at a T other than the one asked for.
    top_k -1 and top_p 1.0 and min_p 0.0 mean "off".
    `logprobs=k` also returns the k most likely alternatives of every generated token;
    the logprob of the sampled token itself is always returned.
    `prompt_logprobs=k` returns the logprob of every prompt token (k alternatives each).
    `prefix_choices`: the output text must begin with one of these strings (tokens are
    constrained until one is complete, then sampling is free). The logprobs reported for
    constrained tokens are still the model's own; `sampling_logprobs` are the constrained ones.
    `logprobs=-1` / `prompt_logprobs=-1` mean the whole vocabulary (vLLM).

    Processing of the logits (vLLM's names, ranges and semantics; see engine/penalties.py):
    `presence_penalty` / `frequency_penalty` in [-2, 2] over the output tokens (OpenAI),
    `repetition_penalty` > 0 over prompt and output tokens (1 = off), `logit_bias` token id
    -> bias added to the logit (clamped to [-100, 100], as vLLM does), `allowed_token_ids`
    (only these may be sampled), `bad_words` (strings never generated as a whole; the
    engine tokenizes them into `bad_words_token_ids`, which callers may also give directly).
    Like `prefix_choices` they change `sampling_logprobs` only, never `logprobs`.
    `truncate_prompt_tokens=k` keeps only the last k prompt tokens (-1: the model's context).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    max_tokens: int = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    prefix_choices: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] = field(default_factory=list)
    bad_words_token_ids: list[list[int]] | None = None
    truncate_prompt_tokens: int | None = None
    structured: StructuredOutput | None = (
        None  # a grammar (engine/structured.py); checked at admission
    )

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        check_int("n", self.n, minimum=1)
        check_number("temperature", self.temperature)
        if self.temperature < 0 or math.isinf(self.temperature):
            raise ParamError(
                "temperature", f"temperature must be >= 0 and finite, got {self.temperature}"
            )
        if self.temperature < GREEDY_TEMPERATURE_EPS:
            self.temperature = 0.0
        check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ParamError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        check_int("top_k", self.top_k)
        if self.top_k == 0 or self.top_k < -1:
            raise ParamError("top_k", f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        check_number("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ParamError("min_p", f"min_p must be in [0, 1], got {self.min_p}")
        check_int("max_tokens", self.max_tokens, minimum=1)
        check_int("min_tokens", self.min_tokens, minimum=0)
        if self.min_tokens > self.max_tokens:
            raise ParamError(
                "min_tokens",
                f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})",
            )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ParamError("stop", f"stop must be a list of non-empty strings, got {s!r}")
        if isinstance(self.prefix_choices, str):
            raise ParamError(
                "prefix_choices", "prefix_choices must be a list of strings, not one string"
            )
        self.prefix_choices = list(self.prefix_choices or [])
        for s in self.prefix_choices:
            if not isinstance(s, str) or not s:
                raise ParamError(
                    "prefix_choices", f"prefix_choices must be non-empty strings, got {s!r}"
                )
        for t in self.stop_token_ids:
            check_int("stop_token_ids", t, minimum=0)
        if self.seed is not None:
            check_int("seed", self.seed)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and check_int(name, value) < -1:
                raise ParamError(name, f"{name} must be non-negative or -1, got {value}")
        for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
            check_bool(name, getattr(self, name))
        self._check_processing()

    def _check_processing(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = check_number(name, getattr(self, name), finite=True)
            if not -2.0 <= value <= 2.0:
                raise ParamError(name, f"{name} must be in [-2, 2], got {value}.")
        check_number("repetition_penalty", self.repetition_penalty, finite=True)
        if self.repetition_penalty <= 0.0:
            raise ParamError(
                "repetition_penalty",
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.",
            )
        self.logit_bias = _clamped_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
            if not self.allowed_token_ids:
                raise ParamError("allowed_token_ids", "allowed_token_ids is not None and empty!")
            for t in self.allowed_token_ids:
                check_int("allowed_token_ids", t, minimum=0)
        self.bad_words = _strings("bad_words", self.bad_words)
        if self.bad_words_token_ids is not None:
            self.bad_words_token_ids = [list(ids) for ids in self.bad_words_token_ids]
            for ids in self.bad_words_token_ids:
                if not ids:
                    raise ParamError("bad_words_token_ids", "a bad word needs at least one token")
                for t in ids:
                    check_int("bad_words_token_ids", t, minimum=0)
        k = self.truncate_prompt_tokens
        if k is not None and (check_int("truncate_prompt_tokens", k) == 0 or k < -1):
            raise ParamError(
                "truncate_prompt_tokens",
                f"truncate_prompt_tokens must be an integer >= 1 or -1, got {k}",
            )

    def truncated_prompt(self, token_ids: list[int], max_model_len: int) -> list[int]:
        """The prompt tokens the engine keeps: the last `truncate_prompt_tokens` of them
        (-1: the last `max_model_len`), all of them when unset (vLLM's left truncation)."""
        k = self.truncate_prompt_tokens
        if k is None:
            return token_ids
        k = max_model_len if k == -1 else k
        return token_ids[-k:] if len(token_ids) > k else token_ids

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def logprob_temperature(self) -> float:
        """The T of the logprob contract: log_softmax(logits / T), T = 1 when greedy."""
        return 1.0 if self.greedy else self.temperature


LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range; vLLM clamps to it rather than refuse


def _clamped_bias(bias: dict[int, float] | None) -> dict[int, float] | None:
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise ParamError("logit_bias", f"logit_bias must map token ids to numbers, got {bias!r}")
    clamped = {}
    for token, value in bias.items():
        check_int("logit_bias", token, minimum=0)
        value = check_number("logit_bias", value, finite=True)
        clamped[token] = min(LOGIT_BIAS_LIMIT, max(-LOGIT_BIAS_LIMIT, float(value)))
    return clamped


def _strings(name: str, values: object) -> list[str]:
    if isinstance(values, str):
        raise ParamError(name, f"{name} must be a list of strings, not one string")
    values = list(values or [])  # type: ignore[call-overload]
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise ParamError(name, f"{name} must be non-empty strings, got {v!r}")
    return values
