"""A sampler row that samples the plain distribution: no truncation, no bans, no top-k."""

from __future__ import annotations

from typing import Any

from rlserve.engine.sampler import SamplingRow


def plain_row(seed: int = 0, **fields: Any) -> SamplingRow:
    """A `SamplingRow` at temperature 1 with every truncation off; `fields` override."""
    base: dict[str, Any] = dict(
        temperature=1.0,
        top_k=-1,
        top_p=1.0,
        min_p=0.0,
        noise_seed=seed,
        banned_token_ids=[],
        num_top_logprobs=0,
    )
    return SamplingRow(**{**base, **fields})
