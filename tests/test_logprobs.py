"""Contract 2: generated logprobs = log_softmax(logits / T) = score() of the same tokens."""

import pytest
import torch

from rlserve import SamplingParams
from tests.support.checkpoints import load_hf
from tests.support.numeric import max_abs_diff

PROMPTS = [[5, 17, 42, 99, 3, 250, 7], list(range(30, 70))]


@pytest.fixture(scope="module")
def hf(checkpoints):
    return load_hf(checkpoints["qwen3"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_logprobs_equal_score_and_transformers(qwen3, hf, temperature):
    params = SamplingParams(temperature=temperature, max_tokens=24, seed=7, ignore_eos=True)
    for prompt, out in zip(PROMPTS, qwen3.generate(PROMPTS, params), strict=True):
        c = out.outputs[0]
        assert len(c.logprobs) == len(c.token_ids) == 24
        scored = qwen3.score(prompt, c.token_ids, temperature=temperature)
        assert max_abs_diff(scored, c.logprobs) <= 1e-5
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + c.token_ids])).logits[0].float()
        ref = torch.log_softmax(logits / temperature, dim=-1)
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(c.token_ids) - 1)
        expected = ref[positions, torch.tensor(c.token_ids)]
        assert max_abs_diff(c.logprobs, expected) <= 1e-4


def test_greedy_logprobs_use_temperature_one(qwen3):
    out = qwen3.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[
        0
    ].outputs[0]
    scored = qwen3.score(PROMPTS[0], out.token_ids, temperature=1.0)
    assert max_abs_diff(scored, out.logprobs) <= 1e-5


def test_sampling_logprobs_are_under_the_truncated_distribution(qwen3):
    prompt = PROMPTS[0]
    params = SamplingParams(temperature=0.8, top_k=5, max_tokens=6, seed=3, ignore_eos=True)
    c = qwen3.generate(prompt, params)[0].outputs[0]
    logits = qwen3.logits(prompt + c.token_ids)[len(prompt) - 1 : -1] / 0.8
    for t, token in enumerate(c.token_ids):
        top = torch.topk(logits[t], 5)
        assert token in top.indices.tolist()  # sampled inside the top-k
        truncated = torch.log_softmax(top.values, dim=-1)
        expected = truncated[top.indices.tolist().index(token)].item()
        assert abs(c.sampling_logprobs[t] - expected) <= 1e-5
        assert c.sampling_logprobs[t] >= c.logprobs[t]  # renormalised mass is larger


def test_top_logprobs_and_prompt_logprobs(qwen3):
    prompt = PROMPTS[1]
    out = qwen3.generate(
        prompt, SamplingParams(temperature=0, max_tokens=4, logprobs=3, prompt_logprobs=2)
    )[0]
    c = out.outputs[0]
    assert len(c.top_logprobs) == 4
    for token, lp, top in zip(c.token_ids, c.logprobs, c.top_logprobs, strict=True):
        assert len(top) == 3
        assert token in top and abs(top[token] - lp) < 1e-6  # greedy pick is the top one
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    scored = qwen3.score(prompt[:1], prompt[1:])
    assert max_abs_diff(scored, out.prompt_logprobs[1:]) < 1e-5
    assert all(len(t) == 2 for t in out.prompt_top_logprobs[1:])


def test_score_batch_and_bad_input(qwen3):
    scores = qwen3.score([[1, 2, 3], [4, 5]], [[6, 7], [8]])
    assert [len(s) for s in scores] == [2, 1]
    with pytest.raises(ValueError, match="responses"):
        qwen3.score([[1, 2]], [[3], [4]])
    with pytest.raises(ValueError, match="non-empty"):
        qwen3.score([1, 2], [])
    with pytest.raises(ValueError, match="temperature"):
        qwen3.score([1, 2], [3], temperature=-1.0)
