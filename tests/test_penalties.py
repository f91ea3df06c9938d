"""logit_bias, allowed_token_ids, bad_words, the three penalties and the grammar mask in the
sampler, against hand computations (vLLM's rules); `logprobs` stay the model's own."""

import math
import time

import pytest
import torch

from rlserve import SamplingParams
from rlserve.engine import penalties
from rlserve.engine.penalties import PenaltyRow, bad_words_token_ids, prepare
from rlserve.engine.sampler import SamplingRow, noise_seed, sample
from tests.support.sampling import plain_row

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def _row(seed: int = 0, **kw) -> SamplingRow:
    return plain_row(seed, **{"temperature": 0.0, **kw})


def _pen(prompt=(), output=(), **kw) -> PenaltyRow:
    return PenaltyRow(prompt_ids=list(prompt), output_ids=list(output), **kw)


def _lp(logits: torch.Tensor, token: int, t: float = 1.0) -> float:
    return torch.log_softmax(logits / t, -1)[token].item()


def test_token_mask_limits_sampling_and_keeps_raw_logprobs():
    mask = torch.tensor([False, False, True, True, False, False])
    for temperature in (0.0, 1.0):
        out = sample(LOGITS[None], [_row(1, temperature=temperature, token_mask=mask)])
        token = out.token_ids[0]
        assert token in (2, 3)
        assert out.logprobs[0] == pytest.approx(_lp(LOGITS, token))
        assert out.sampling_logprobs[0] == pytest.approx(_lp(LOGITS[2:4], token - 2))
    out = sample(LOGITS[None], [_row(token_mask=torch.zeros(6, dtype=torch.bool))])
    assert "every token is excluded" in out.errors[0]


def test_token_mask_shorter_than_the_padded_vocabulary_never_allows_the_padding():
    out = sample(LOGITS[None], [_row(token_mask=torch.tensor([False, True]))])
    assert out.token_ids == [1] and out.sampling_logprobs[0] == pytest.approx(0.0)


def test_logit_bias_and_allowed_token_ids():
    out = sample(LOGITS[None], [_row(penalties=_pen(logit_bias={4: 3.5}))])
    biased = LOGITS.clone()
    biased[4] += 3.5
    assert out.token_ids == [4]
    assert out.logprobs[0] == pytest.approx(_lp(LOGITS, 4))
    assert out.sampling_logprobs[0] == pytest.approx(_lp(biased, 4))
    out = sample(LOGITS[None], [_row(penalties=_pen(allowed_token_ids=[3, 5]))])
    assert out.token_ids == [3]
    assert out.sampling_logprobs[0] == pytest.approx(_lp(torch.tensor([0.0, -3.0]), 0))


def test_bad_words_ban_the_last_token_only_after_the_prefix():
    words = [[0], [3, 1]]
    out = sample(LOGITS[None], [_row(penalties=_pen(output=[2], bad_words=words))])
    assert out.token_ids == [1]  # 0 banned always, 1 only after 3
    out = sample(LOGITS[None], [_row(penalties=_pen(output=[2, 3], bad_words=words))])
    assert out.token_ids == [2]


def test_penalties_match_vllm_by_hand():
    prompt, output = [1, 4], [0, 0, 2]
    row = _pen(prompt, output, presence=0.5, frequency=0.25, repetition=2.0)
    got = penalties.apply(LOGITS[None], [row])[0]
    # repetition over prompt + output: tokens 0, 1, 2, 4; positive / 2, negative * 2
    # then frequency * count and presence once, over output only (token 0 twice, 2 once)
    want = [2.0 / 2 - 0.25 * 2 - 0.5, 1.0 / 2, 0.5 / 2 - 0.25 - 0.5, 0.0, -1.0 * 2, -3.0]
    assert got.tolist() == pytest.approx(want)


def test_penalised_sampling_logprobs_at_temperature_and_greedy_choice():
    row = _pen([], [0], frequency=2.0)  # token 0: 2.0 - 2.0 = 0.0 < 1.0
    out = sample(LOGITS[None], [_row(penalties=row)])
    assert out.token_ids == [1]
    seed = noise_seed(5, 0, 0)
    out = sample(LOGITS[None], [_row(seed, temperature=0.7, penalties=row)])
    token, adjusted = out.token_ids[0], LOGITS.clone()
    adjusted[0] -= 2.0
    assert out.logprobs[0] == pytest.approx(_lp(LOGITS, token, 0.7))
    assert out.sampling_logprobs[0] == pytest.approx(_lp(adjusted, token, 0.7))


def test_rows_without_processing_are_untouched_and_batches_do_not_mix():
    plain, penalised = (
        _row(noise_seed(1, 0, 3), temperature=1.0),
        _row(noise_seed(2, 0, 3), temperature=1.0, penalties=_pen([0], [0], repetition=1.5)),
    )
    batch = LOGITS.expand(2, -1).contiguous()
    together = sample(batch, [plain, penalised])
    assert together.token_ids[0] == sample(LOGITS[None], [plain]).token_ids[0]
    assert together.token_ids[1] == sample(LOGITS[None], [penalised]).token_ids[0]
    assert penalties.apply(batch, [None, None]) is batch


def test_frequencies_follow_the_penalised_distribution():
    row = _pen([], [0, 0], frequency=0.5, presence=0.5)  # token 0: 2.0 - 1.0 - 0.5
    draws = 6000
    rows = [_row(noise_seed(3, 0, i), temperature=1.0, penalties=row) for i in range(draws)]
    out = sample(LOGITS.expand(draws, -1).contiguous(), rows)
    freq = torch.bincount(torch.tensor(out.token_ids), minlength=6) / draws
    adjusted = LOGITS.clone()
    adjusted[0] = 0.5
    assert (freq - adjusted.softmax(-1)).abs().max() < 0.025


def test_full_vocabulary_top_logprobs():
    out = sample(
        LOGITS[None],
        [
            _row(num_top_logprobs=-1),
        ][:1],
    )
    assert len(out.top_logprobs[0]) == len(LOGITS)
    assert math.isclose(sum(math.exp(v) for v in out.top_logprobs[0].values()), 1, rel_tol=1e-5)


class _Tok:
    """A word-level stand-in: "x" alone and " x" are different tokens."""

    vocab = {"bad": 7, " bad": 8, "very": 9, " very": 10, "word": 11, " word": 12}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        pieces = text.replace(" ", "\0 ").split("\0")
        return [self.vocab[p] for p in pieces if p]


def test_bad_words_are_tokenized_as_vllm_does_and_checked_against_the_vocabulary():
    assert bad_words_token_ids(["bad", " very word"], _Tok()) == [[7], [8], [9, 12], [10, 12]]
    params = prepare(SamplingParams(bad_words=["bad"]), _Tok(), vocab_size=20)
    assert params.bad_words_token_ids == [[7], [8]] and params.bad_words == []
    with pytest.raises(ValueError, match="specified as bad") as err:
        prepare(SamplingParams(bad_words=["bad"]), _Tok(), vocab_size=8)
    assert err.value.field == "bad_words"
    for field, value in (("logit_bias", {30: 1.0}), ("allowed_token_ids", [1, 30])):
        with pytest.raises(ValueError, match="out-of-vocab") as err:
            prepare(SamplingParams(**{field: value}), _Tok(), vocab_size=20)
        assert err.value.field == field


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("presence_penalty", 2.5, "must be in [-2, 2]"),
        ("frequency_penalty", -2.01, "must be in [-2, 2]"),
        ("presence_penalty", float("nan"), "number"),
        ("repetition_penalty", 0.0, "greater than zero"),
        ("repetition_penalty", float("inf"), "finite"),
        ("logit_bias", {"5": 1.0}, "integer"),
        ("logit_bias", {5: "x"}, "number"),
        ("logit_bias", {-1: 1.0}, ">= 0"),
        ("allowed_token_ids", [], "empty"),
        ("allowed_token_ids", [-1], ">= 0"),
        ("bad_words", "word", "not one string"),
        ("bad_words", [""], "non-empty"),
        ("bad_words_token_ids", [[]], "at least one token"),
        ("truncate_prompt_tokens", 0, ">= 1 or -1"),
        ("truncate_prompt_tokens", -2, ">= 1 or -1"),
        ("logprobs", -2, "non-negative or -1"),
        ("prompt_logprobs", -5, "non-negative or -1"),
    ],
)
def test_bad_values_name_their_field(field, value, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")) as err:
        SamplingParams(**{field: value})
    assert err.value.field == field


def test_logit_bias_is_clamped_and_truncation_keeps_the_last_tokens():
    assert SamplingParams(logit_bias={1: 500, 2: -1e9}).logit_bias == {1: 100.0, 2: -100.0}
    params = SamplingParams(truncate_prompt_tokens=2)
    assert params.truncated_prompt([1, 2, 3], 10) == [2, 3]
    assert SamplingParams(truncate_prompt_tokens=-1).truncated_prompt([1, 2, 3], 2) == [2, 3]
    assert SamplingParams().truncated_prompt([1, 2, 3], 2) == [1, 2, 3]


def _best_ms(call, repeats: int = 5) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def test_cost_per_step(capsys):
    """Not a timing assert: prints what the penalties cost on a 151k vocabulary, batch 32
    (best of 5, so other processes on the machine matter less)."""
    logits = torch.randn(32, 151_936)
    hist = list(range(0, 4000, 3))
    pens = [
        _pen(hist, hist[:500], presence=0.5, frequency=0.1, repetition=1.1, logit_bias={5: 1.0})
        for _ in range(32)
    ]
    plain = [_row(i, temperature=1.0) for i in range(32)]
    penalised = [_row(i, temperature=1.0, penalties=p) for i, p in enumerate(pens)]
    figures = {
        "plain": _best_ms(lambda: sample(logits, plain)),
        "penalised": _best_ms(lambda: sample(logits, penalised)),
        "apply": _best_ms(lambda: penalties.apply(logits, pens)),
        "apply_none": _best_ms(lambda: penalties.apply(logits, [None] * 32)),
    }
    assert penalties.apply(logits, [None] * 32) is logits
    with capsys.disabled():
        print(
            "\nsample() batch 32 x 151936 vocab, CPU: plain {plain:.1f} ms/step, with "
            "penalties + bias over 1333 prompt + 500 output tokens {penalised:.1f} ms "
            "(penalties.apply alone {apply:.1f} ms; with no row using them "
            "{apply_none:.4f} ms)".format(**figures)
        )
