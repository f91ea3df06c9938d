"""Turn fp32 logits into tokens and the logprobs RL needs.

For each row:
- `logprobs`: log_softmax(logits / T) of the chosen token (T = 1 when greedy): the number a
  trainer computes at the same temperature (the logprob contract).
- `sampling_logprobs`: the chosen token's logprob under the distribution actually sampled
  from: after logit_bias, allowed/bad tokens and penalties (penalties.py, on the raw
  logits as vLLM does), the grammar mask, min_tokens masking and top-k / top-p / min-p
  truncation, renormalised.
Sampling inverts the CDF of each row at one uniform number drawn from (request seed, sample
index, position) alone, so a seeded request gets the same tokens whatever else shares its
batch (every operation here is row-wise).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rlserve.engine import penalties
from rlserve.engine.penalties import NEG_INF, PenaltyRow


@dataclass
class SamplingRow:
    """What the sampler needs to know about one row of logits."""

    temperature: float  # 0 = greedy
    top_k: int
    top_p: float
    min_p: float
    noise_seed: int
    banned_token_ids: list[int]  # stop/EOS ids while min_tokens is not reached
    num_top_logprobs: int  # k alternatives to report (0 = none)
    allowed_token_ids: list[int] | None = None  # None = any (see prefix_constraint.py)
    token_mask: torch.Tensor | None = None  # bool [vocab], True = allowed (grammars); None = any
    penalties: PenaltyRow | None = None  # bias, allowed/bad tokens, penalties (None = none)


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float]
    sampling_logprobs: list[float]
    top_logprobs: list[dict[int, float] | None]
    # Per row: why it could not be sampled (its other fields are then meaningless), or None.
    errors: list[str | None]


NOT_FINITE = "the model's logits are NaN or infinite"
ALL_EXCLUDED = (
    "every token is excluded (stop/EOS ids banned until min_tokens, prefix_choices, "
    "allowed_token_ids, bad_words, logit_bias and the grammar mask)"
)


def noise_seed(seed: int, index: int, position: int) -> int:
    # Python's hash of a tuple of ints is deterministic across processes.
    return hash((seed, index, position)) & 0x7FFF_FFFF_FFFF_FFFF


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
    """logits: [N, vocab] fp32, one row per entry of `rows`. A row with nothing to sample
    gets an entry in `errors` (rather than an out-of-range token); the others are sampled."""
    temps = torch.tensor(
        [r.temperature if r.temperature > 0 else 1.0 for r in rows],
        dtype=torch.float32,
        device=logits.device,
    )
    scaled = logits / temps[:, None]
    logprobs = torch.log_softmax(scaled, dim=-1)
    adjusted = penalties.apply(logits, [r.penalties for r in rows])
    if adjusted is not logits:
        scaled = adjusted / temps[:, None]
    processed = _truncate(_ban(scaled, rows), rows)
    # Nothing changed the scaled logits (the common case): the same softmax, computed once.
    untouched = adjusted is logits and processed is scaled
    sampling_logprobs = logprobs if untouched else torch.log_softmax(processed, dim=-1)
    chosen = processed.argmax(dim=-1)
    errors = _row_errors(processed.gather(1, chosen[:, None]).squeeze(1))
    sampled = [i for i, r in enumerate(rows) if r.temperature > 0 and errors[i] is None]
    if sampled:
        idx = torch.tensor(sampled, device=logits.device)
        chosen[idx] = _inverse_cdf(sampling_logprobs[idx], [rows[i] for i in sampled])
    picked = chosen[:, None]
    top = _top_logprobs(logprobs, rows)
    return SamplerOutput(
        token_ids=chosen.tolist(),
        logprobs=logprobs.gather(1, picked).squeeze(1).tolist(),
        sampling_logprobs=sampling_logprobs.gather(1, picked).squeeze(1).tolist(),
        top_logprobs=top,
        errors=errors,
    )


def _row_errors(best: torch.Tensor) -> list[str | None]:
    """From each row's largest processed logit (argmax picks a NaN or +inf when a row has
    one, and -inf only when every token is excluded): which rows cannot be sampled."""
    bad = ~torch.isfinite(best)
    if not bad.any():
        return [None] * len(best)
    excluded = best == float("-inf")
    return [
        None if not b else ALL_EXCLUDED if e else NOT_FINITE
        for b, e in zip(bad.tolist(), excluded.tolist(), strict=True)
    ]


def _ban(scaled: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    if not any(
        r.banned_token_ids or r.allowed_token_ids is not None or r.token_mask is not None
        for r in rows
    ):
        return scaled
    out = scaled.clone()
    for i, r in enumerate(rows):
        if r.allowed_token_ids is not None:
            out[i] = float("-inf")
            out[i, r.allowed_token_ids] = scaled[i, r.allowed_token_ids]
        if r.token_mask is not None:
            out[i] = out[i].masked_fill(~_row_mask(r.token_mask, out.shape[1], out.device), NEG_INF)
        if r.banned_token_ids:
            out[i, r.banned_token_ids] = float("-inf")
    return out


def _row_mask(mask: torch.Tensor, vocab: int, device: torch.device) -> torch.Tensor:
    """`mask` as bool [vocab] on `device`: a grammar's vocabulary may be shorter than the
    model's padded one (the padding is never allowed) or longer (the excess is cut)."""
    mask = mask.to(device=device, dtype=torch.bool)
    if len(mask) >= vocab:
        return mask[:vocab]
    return torch.cat([mask, mask.new_zeros(vocab - len(mask))])


def _truncate(scaled: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Apply top-k, then top-p, then min-p, on sampled (non-greedy) rows only."""
    sampled = [r.temperature > 0 for r in rows]
    need_k = [i for i, r in enumerate(rows) if sampled[i] and r.top_k > 0]
    need_p = [i for i, r in enumerate(rows) if sampled[i] and r.top_p < 1.0]
    need_min_p = [i for i, r in enumerate(rows) if sampled[i] and r.min_p > 0.0]
    if not (need_k or need_p or need_min_p):
        return scaled
    out = scaled.clone()
    for i in need_k:
        k = min(rows[i].top_k, out.shape[1])
        kth = torch.topk(out[i], k).values[-1]
        out[i] = out[i].masked_fill(out[i] < kth, float("-inf"))
    if need_p:
        idx = torch.tensor(need_p, device=out.device)
        top_p = torch.tensor([rows[i].top_p for i in need_p], device=out.device)
        out[idx] = _top_p(out[idx], top_p)
    for i in need_min_p:
        probs = torch.softmax(out[i], dim=-1)
        out[i] = out[i].masked_fill(probs < rows[i].min_p * probs.max(), float("-inf"))
    return out


def _top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = mass_before >= top_p[:, None]  # the first token is always kept
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _inverse_cdf(logprobs: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The first token whose cumulative probability exceeds u * total, u ~ U[0, 1)."""
    # float64 keeps the cumulative sum exact enough over a 150k-token vocabulary.
    cdf = logprobs.exp().double().cumsum(dim=-1)
    u = torch.tensor(
        [random.Random(r.noise_seed).random() for r in rows],
        dtype=torch.float64,
        device=logprobs.device,
    )
    # Scaling by the row total keeps the draw inside the row despite rounding.
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)


def _top_logprobs(logprobs: torch.Tensor, rows: list[SamplingRow]) -> list[dict | None]:
    """Each row's `num_top_logprobs` best (-1: the whole vocabulary, vLLM's `logprobs=-1`)."""
    vocab = logprobs.shape[1]
    wanted = [vocab if r.num_top_logprobs < 0 else min(r.num_top_logprobs, vocab) for r in rows]
    k = max(wanted)
    if k == 0:
        return [None] * len(rows)
    values, ids = torch.topk(logprobs, k, dim=-1)
    values, ids = values.tolist(), ids.tolist()
    return [
        dict(zip(ids[i][:w], values[i][:w], strict=True)) if w else None
        for i, w in enumerate(wanted)
    ]
