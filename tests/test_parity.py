"""Contract 1: logits match transformers (fp32, <= 1e-4) and greedy decoding matches."""

import pytest
import torch

from rlserve import SamplingParams
from tests.support.checkpoints import FAMILIES, load_hf
from tests.support.numeric import max_abs_diff

PROMPTS = [[5, 17, 42, 99, 3, 250, 7], [11, 12], list(range(30, 110))]


@pytest.fixture(scope="module")
def pairs(checkpoints, make_engine):
    """family -> (our engine, the transformers model) on the same random checkpoint."""
    return {
        name: (make_engine(path, num_blocks=128, block_size=8), load_hf(path))
        for name, path in checkpoints.items()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(pairs, family):
    engine, hf = pairs[family]
    for prompt in PROMPTS:
        ours = engine.logits(prompt)
        with torch.no_grad():
            ref = hf(torch.tensor([prompt])).logits[0].float()
        assert ours.shape == ref.shape
        assert max_abs_diff(ours, ref) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_transformers(pairs, family):
    engine, hf = pairs[family]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = engine.generate(PROMPTS, params)  # all prompts in one batch
    for prompt, out in zip(PROMPTS, outs, strict=True):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=32,
                min_new_tokens=32,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert out.outputs[0].token_ids == ref[0, len(prompt) :].tolist()
        assert out.outputs[0].finish_reason == "length"


def test_bundled_model_logits_and_greedy_match_transformers(bundled):
    hf = load_hf(bundled.model_path)
    prompt = bundled.render_chat([{"role": "user", "content": "What is 12 + 30?"}])
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    assert max_abs_diff(bundled.logits(prompt), ref) <= 1e-4
    out = bundled.generate([prompt], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[
        0
    ]
    with torch.no_grad():
        ref_ids = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert out.outputs[0].token_ids == ref_ids[0, len(prompt) :].tolist()
