"""logit_bias, allowed_token_ids, bad_words and the three penalties, batched (vLLM's rules).

Applied to the raw logits before temperature, in vLLM's order: the allowed-token mask,
bad words, logit_bias, then repetition (prompt + output tokens), frequency and presence
(output tokens only). The sampler's `logprobs` are computed from the raw logits; only its
`sampling_logprobs` see these changes. A batch in which no row uses any of them costs
one pass over the rows (`apply` returns its input untouched).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from rlserve._checks import ParamError
from rlserve.sampling_params import SamplingParams

NEG_INF = float("-inf")


@dataclass
class PenaltyRow:
    """One row's processing; `prompt_ids` / `output_ids` are its tokens so far."""

    prompt_ids: Sequence[int]
    output_ids: Sequence[int]
    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[list[int]] | None = None

    @property
    def penalised(self) -> bool:
        return self.presence != 0.0 or self.frequency != 0.0 or self.repetition != 1.0


def uses_processing(params: SamplingParams) -> bool:
    """Whether `params` ask for anything this module does."""
    return bool(
        params.presence_penalty
        or params.frequency_penalty
        or params.repetition_penalty != 1.0
        or params.logit_bias
        or params.allowed_token_ids is not None
        or params.bad_words_token_ids
    )


def penalty_row(seq) -> PenaltyRow | None:
    """The `SamplingRow.penalties` of an engine `Sequence` (None when it uses none)."""
    p = seq.params
    if not uses_processing(p):
        return None
    begin = seq.num_prompt_tokens
    return PenaltyRow(
        prompt_ids=seq.token_ids[:begin],
        output_ids=seq.token_ids[begin:],
        presence=p.presence_penalty,
        frequency=p.frequency_penalty,
        repetition=p.repetition_penalty,
        logit_bias=p.logit_bias,
        allowed_token_ids=p.allowed_token_ids,
        bad_words=p.bad_words_token_ids,
    )


def apply(logits: torch.Tensor, rows: Sequence[PenaltyRow | None]) -> torch.Tensor:
    """logits [N, vocab] (raw, fp32) after each row's processing; the input itself when
    no row has any."""
    used = [i for i, r in enumerate(rows) if r is not None]
    if not used:
        return logits
    out = logits.clone()
    _mask_allowed(out, rows)
    _ban_bad_words(out, rows)
    _add_bias(out, rows)
    if any(r is not None and r.penalised for r in rows):
        _penalise(out, rows)
    return out


def _mask_allowed(out: torch.Tensor, rows: Sequence[PenaltyRow | None]) -> None:
    pairs = [
        (i, t)
        for i, r in enumerate(rows)
        if r is not None and r.allowed_token_ids is not None
        for t in r.allowed_token_ids
    ]
    if not pairs:
        return
    allowed = torch.zeros_like(out, dtype=torch.bool)
    allowed[_index(pairs, out.device)] = True
    limited = torch.tensor(
        [r is not None and r.allowed_token_ids is not None for r in rows], device=out.device
    )
    out.masked_fill_(~allowed & limited[:, None], NEG_INF)


def _ban_bad_words(out: torch.Tensor, rows: Sequence[PenaltyRow | None]) -> None:
    """vLLM's rule: a bad word's last token is banned when the output ends with the rest."""
    pairs = []
    for i, r in enumerate(rows):
        if r is None or not r.bad_words:
            continue
        past = list(r.output_ids[-max(map(len, r.bad_words)) :])
        for word in r.bad_words:
            prefix = word[:-1]
            if len(prefix) <= len(past) and past[len(past) - len(prefix) :] == prefix:
                pairs.append((i, word[-1]))
    if pairs:
        out[_index(pairs, out.device)] = NEG_INF


def _add_bias(out: torch.Tensor, rows: Sequence[PenaltyRow | None]) -> None:
    entries = [
        (i, t, b)
        for i, r in enumerate(rows)
        if r is not None and r.logit_bias
        for t, b in r.logit_bias.items()
    ]
    if not entries:
        return
    where = _index([(i, t) for i, t, _ in entries], out.device)
    bias = torch.tensor([b for _, _, b in entries], dtype=out.dtype, device=out.device)
    out.index_put_(where, bias, accumulate=True)


def _penalise(out: torch.Tensor, rows: Sequence[PenaltyRow | None]) -> None:
    """vLLM's `apply_penalties`: repetition divides positive logits (multiplies negative
    ones) of every token seen in the prompt or output; frequency subtracts its count in
    the output times the penalty; presence subtracts the penalty once if it is there.
    Only the seen (row, token) entries are touched, so the cost follows the number of
    tokens, not rows x vocabulary."""
    vocab, device = out.shape[1], out.device
    used = [(i, r) for i, r in enumerate(rows) if r is not None and r.penalised]
    prompt = _keys([(i, r.prompt_ids) for i, r in used], vocab, device)
    output = _keys([(i, r.output_ids) for i, r in used], vocab, device)
    seen, inverse = torch.unique(torch.cat([prompt, output]), return_inverse=True)
    count = torch.zeros(len(seen), dtype=out.dtype, device=device)
    count.index_add_(
        0, inverse[len(prompt) :], torch.ones(len(output), dtype=out.dtype, device=device)
    )
    row = seen // vocab
    per_row = torch.tensor(
        [
            (r.repetition, r.frequency, r.presence) if r is not None else (1.0, 0.0, 0.0)
            for r in rows
        ],
        dtype=out.dtype,
        device=device,
    )[row]
    flat = out.view(-1)
    value = flat[seen]
    value = torch.where(value > 0, value / per_row[:, 0], value * per_row[:, 0])
    flat[seen] = value - per_row[:, 1] * count - per_row[:, 2] * (count > 0)


def _keys(
    token_lists: list[tuple[int, Sequence[int]]], vocab: int, device: torch.device
) -> torch.Tensor:
    """row * vocab + token for every token of every (row, tokens) pair, as one tensor."""
    parts = [
        torch.as_tensor(list(tokens), dtype=torch.long) + i * vocab
        for i, tokens in token_lists
        if len(tokens)
    ]
    if not parts:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(parts).to(device)


def _index(pairs: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, ...]:
    flat = torch.tensor(pairs, dtype=torch.long, device=device)
    return flat[:, 0], flat[:, 1]


def prepare(params: SamplingParams, tokenizer, vocab_size: int) -> SamplingParams:
    """`params` ready for the engine: `bad_words` tokenized (vLLM's way) into
    `bad_words_token_ids`, `logprobs` / `prompt_logprobs` -1 made the vocabulary size, and
    every token id they name checked against the vocabulary (ParamError naming the field,
    vLLM's messages)."""
    whole = {
        name: vocab_size for name in ("logprobs", "prompt_logprobs") if getattr(params, name) == -1
    }
    if whole:
        params = replace(params, **whole)
    if params.bad_words:
        words = list(params.bad_words_token_ids or []) + bad_words_token_ids(
            params.bad_words, tokenizer
        )
        params = replace(params, bad_words=[], bad_words_token_ids=words)
    _check_vocab(params, vocab_size)
    return params


def bad_words_token_ids(words: list[str], tokenizer) -> list[list[int]]:
    """vLLM's `SamplingParams.update_from_tokenizer`: each word as written (leading spaces
    stripped) and, when it tokenizes differently, with one leading space."""
    found: list[list[int]] = []
    for word in words:
        plain = tokenizer.encode(word.lstrip(), add_special_tokens=False)
        spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
        found.append(plain)
        if plain and spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            found.append(spaced)
    return [ids for ids in found if ids]


def _check_vocab(params: SamplingParams, vocab_size: int) -> None:
    if params.allowed_token_ids is not None and any(
        t >= vocab_size for t in params.allowed_token_ids
    ):
        raise ParamError("allowed_token_ids", "allowed_token_ids contains out-of-vocab token id!")
    bad = [t for t in params.logit_bias or {} if t >= vocab_size]
    if bad:
        raise ParamError(
            "logit_bias",
            f"token_id(s) {bad} in logit_bias contain out-of-vocab token ids. "
            f"Vocabulary size: {vocab_size}",
        )
    bad = [t for ids in params.bad_words_token_ids or [] for t in ids if t >= vocab_size]
    if bad:
        raise ParamError(
            "bad_words",
            f"The model vocabulary size is {vocab_size}, but the following tokens were "
            f"specified as bad: {bad}. All token id values should be integers satisfying: "
            f"0 <= token_id < {vocab_size}.",
        )
