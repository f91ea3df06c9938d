"""Sampled outputs with speculation follow the target's distribution (chi-square).

Top-k 3 at a high temperature makes a three-token vocabulary at each position of the
bundled model's answer to "What is 3 + 4?". The first output token is sampled at the end
of the prefill; the second is verification row 0 against the n-gram's guess there, which
is accepted in some samples and rejected in others; the third, in samples whose second
token equals that guess, is row 1 of the same verification (reached only through an
acceptance). Both must follow the exact distributions computed from the target's own
logits: a wrong acceptance rule (accepting guesses too often, or resampling wrongly on
rejection) skews them.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from rlserve import Engine
from rlserve.engine.ngram_proposer import lookup
from rlserve.engine.spec_rows import AlwaysPays
from rlserve.sampling_params import SamplingParams

TEMPERATURE, TOP_K, NUM_SAMPLES = 8.0, 3, 600
MIN_P_VALUE = 1e-3  # seeds are fixed: the test is deterministic, this is its margin


@pytest.fixture(scope="module")
def engine(make_engine) -> Engine:
    spec = {"method": "ngram", "num_speculative_tokens": 3, "max_batch_size": NUM_SAMPLES}
    engine = make_engine(speculative=spec)
    engine.step_runner.speculator.costs = AlwaysPays()  # speculate whatever steps take
    return engine


def prompt_ids(engine: Engine) -> list[int]:
    tok = engine.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}], tokenize=False, add_generation_prompt=True
    )
    return tok(text, add_special_tokens=False).input_ids


def target_distribution(engine: Engine, context: list[int]) -> dict[int, float]:
    """The top-k distribution the target samples from after `context`, renormalised,
    from its own logprobs (with speculation off: one prefill, one sampled row)."""
    speculator, engine.step_runner.speculator = engine.step_runner.speculator, None
    try:
        params = SamplingParams(max_tokens=1, temperature=TEMPERATURE, logprobs=TOP_K, seed=0)
        top = engine.generate([context], params)[0].outputs[0].top_logprobs[0]
    finally:
        engine.step_runner.speculator = speculator
    total = sum(math.exp(v) for v in top.values())
    return {t: math.exp(v) / total for t, v in top.items()}


def chi_square_p_value(counts: Counter, probs: dict[int, float]) -> float:
    """P(X >= statistic) for X ~ chi-square with 2 degrees of freedom (3 categories)."""
    assert len(probs) == 3 and set(counts) <= set(probs)
    n = sum(counts.values())
    statistic = sum((counts[t] - n * p) ** 2 / (n * p) for t, p in probs.items())
    return math.exp(-statistic / 2)


def test_sampled_tokens_follow_the_target_distribution(engine):
    prompt = prompt_ids(engine)
    params = [
        SamplingParams(max_tokens=3, temperature=TEMPERATURE, top_k=TOP_K, seed=seed)
        for seed in range(NUM_SAMPLES)
    ]
    engine.step_runner.speculator.acceptance = 1.0
    before = engine.stats()
    samples = [o.outputs[0].token_ids for o in engine.generate([prompt] * NUM_SAMPLES, params)]
    after = engine.stats()
    proposed = after["spec_proposed_tokens"] - before["spec_proposed_tokens"]
    accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    assert 0 < accepted < proposed, "need both accepted and rejected guesses"

    first = Counter(s[0] for s in samples).most_common(1)[0][0]
    context = prompt + [first]
    guess = lookup(context, 1, 4, 3)[0]
    row0 = target_distribution(engine, context)
    assert 0.1 < row0[guess] < 0.9, "the guess should be accepted only sometimes"
    second = Counter(s[1] for s in samples if s[0] == first)
    assert chi_square_p_value(second, row0) > MIN_P_VALUE

    accepted_context = context + [guess]
    row1 = target_distribution(engine, accepted_context)
    third = Counter(s[2] for s in samples if s[:2] == [first, guess])
    assert sum(third.values()) > 100
    assert chi_square_p_value(third, row1) > MIN_P_VALUE


def test_the_test_detects_a_skewed_distribution(engine):
    """The statistic refuses what always accepting the guess would give."""
    context = prompt_ids(engine) + [21]
    probs = target_distribution(engine, context)
    guess = max(probs, key=probs.get)
    assert chi_square_p_value(Counter({guess: 400}), probs) < MIN_P_VALUE
