"""The sampler draws from the right distribution, truncated as asked."""

import torch

from rlserve.engine.sampler import SamplingRow, noise_seed, sample
from tests.support.numeric import max_abs_diff
from tests.support.sampling import plain_row

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def _row(seed: int, **kw) -> SamplingRow:
    return plain_row(seed, **kw)


def _frequencies(draws: int = 6000, **kw) -> torch.Tensor:
    rows = [_row(noise_seed(1, 0, i), **kw) for i in range(draws)]
    out = sample(LOGITS.expand(draws, -1).contiguous(), rows)
    return torch.bincount(torch.tensor(out.token_ids), minlength=len(LOGITS)) / draws


def test_frequencies_match_softmax():
    freq = _frequencies()
    assert max_abs_diff(freq, LOGITS.softmax(-1)) < 0.025


def test_temperature_top_k_top_p_min_p():
    freq = _frequencies(temperature=0.5)
    assert max_abs_diff(freq, (LOGITS / 0.5).softmax(-1)) < 0.025
    freq = _frequencies(top_k=2)
    assert freq[2:].sum() == 0
    assert max_abs_diff(freq[:2], LOGITS[:2].softmax(-1)) < 0.025
    probs = LOGITS.softmax(-1)  # [0.56, 0.21, 0.13, 0.08, 0.03, 0.004]
    freq = _frequencies(top_p=0.8)  # keeps 0.56 + 0.21 + 0.13 (the mass before is < 0.8)
    assert freq[3:].sum() == 0 and freq[2] > 0
    freq = _frequencies(min_p=0.2)  # drops tokens below 0.2 * 0.56
    assert freq[(probs < 0.2 * probs.max())].sum() == 0


def test_banned_tokens_and_greedy():
    freq = _frequencies(banned_token_ids=[0, 1])
    assert freq[:2].sum() == 0
    out = sample(LOGITS[None], [_row(0, temperature=0.0)])
    assert out.token_ids == [0]
    assert abs(out.logprobs[0] - LOGITS.log_softmax(-1)[0].item()) < 1e-6
    out = sample(LOGITS[None], [_row(0, temperature=0.0, banned_token_ids=[0])])
    assert out.token_ids == [1]


def test_same_seed_same_token_whatever_the_batch():
    row = _row(noise_seed(42, 3, 17))
    alone = sample(LOGITS[None], [row]).token_ids[0]
    others = [_row(noise_seed(7, 0, i)) for i in range(9)]
    batch = torch.stack([LOGITS * (1 + i / 10) for i in range(9)] + [LOGITS])
    assert sample(batch, others + [row]).token_ids[-1] == alone


def test_rows_with_nothing_to_sample_are_reported_and_the_others_sampled():
    everything = list(range(len(LOGITS)))
    for temperature in (0.0, 1.0):
        rows = [
            _row(0, temperature=temperature),
            _row(1, temperature=temperature, banned_token_ids=everything),
        ]
        out = sample(LOGITS.expand(2, -1).contiguous(), rows)
        assert out.errors[0] is None and "every token is excluded" in out.errors[1]
        assert out.token_ids[0] == sample(LOGITS[None], rows[:1]).token_ids[0]
    broken = LOGITS.expand(3, -1).clone()
    broken[1, 2], broken[2, 4] = float("nan"), float("inf")
    out = sample(broken, [_row(0), _row(1), _row(2)])
    assert out.errors[0] is None and all("NaN or infinite" in e for e in out.errors[1:])
    assert 0 <= out.token_ids[0] < len(LOGITS)
