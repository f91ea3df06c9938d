"""Seed 001's (Hugging Face style) sampling arguments as rlserve `SamplingParams`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from rlserve._checks import ParamError, check_bool, check_positive_int
from rlserve.sampling_params import SamplingParams

# Set through the seed's own names (max_new_tokens, num_return_sequences, do_sample).
_SEED_NAMED = {"n", "max_tokens"}
EXTRA_FIELDS = tuple(sorted({f.name for f in fields(SamplingParams)} - _SEED_NAMED))


def seed_sampling_params(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    do_sample: bool,
    num_return_sequences: int,
    extra: dict[str, Any],
) -> SamplingParams:
    """`do_sample=False` is greedy (temperature 0); `extra` holds further `SamplingParams`
    fields (`seed`, `stop`, `repetition_penalty`, ...); an unknown one is a ValueError
    naming it."""
    check_bool("do_sample", do_sample)
    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive_int("num_return_sequences", num_return_sequences)
    unknown = sorted(set(extra) - set(EXTRA_FIELDS))
    if unknown:
        raise ParamError(
            unknown[0],
            f"unknown generation argument {unknown[0]!r}; besides the seed's arguments, "
            f"these SamplingParams fields are accepted: {', '.join(EXTRA_FIELDS)}",
        )
    return SamplingParams(
        n=num_return_sequences,
        max_tokens=max_new_tokens,
        temperature=temperature if do_sample else 0.0,
        top_p=top_p,
        top_k=top_k,
        **extra,
    )


def is_determined(params: SamplingParams) -> bool:
    """Whether the same request always gives the same tokens (greedy, or seeded)."""
    return params.temperature == 0.0 or params.seed is not None
