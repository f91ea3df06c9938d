"""The native decode step (models/decode_step.py + decode_step.cpp) against the module
path over the same paged KV cache: the same greedy tokens, logprobs and written K/V up to
summation order, for every supported family and the bundled draft, one token per
sequence and a few (a short prefill); bad input is refused."""

from __future__ import annotations

import pytest
import torch

from rlserve import Engine
from rlserve.config import BUNDLED_MODEL
from rlserve.engine.draft_loop import DraftLoop
from rlserve.models import decode_step
from rlserve.models.decode_step import DecodeStep, unsupported_reason
from tests.support.checkpoints import FAMILIES

DRAFT = str(BUNDLED_MODEL / "draft")


@pytest.fixture(autouse=True)
def kernel_built():
    if decode_step.kernel() is None:  # no g++ here: the module path is all there is
        pytest.skip("decode-step kernel unavailable")


def loops(engine: Engine) -> tuple[DraftLoop, DraftLoop]:
    """Two loops over the engine's model and KV: the module path, and the native step."""
    step = DecodeStep(engine.model, engine.block_manager.block_size)
    return (
        DraftLoop(engine.runner, engine.block_manager, None),
        DraftLoop(engine.runner, engine.block_manager, step),
    )


def caches(engine: Engine) -> list[torch.Tensor]:
    attn = [layer.self_attn for layer in engine.model.layers]
    return [t for a in attn for t in (a.k_cache, a.v_cache)]


def compare_paths(engine: Engine, prompts: list[list[int]], new: list[list[int]]) -> None:
    """Prefill `prompts` (module path), then forward `new[i]` after prompt i both ways
    from the same cache; tokens, logprobs and the K/V they write must agree."""
    module, native = loops(engine)
    seqs = []
    for i, prompt in enumerate(prompts):
        seq = module._catch_up(("s", i), prompt, len(new[i]) + 1, set())
        assert seq is not None
        seqs.append(seq)
    module._forward(seqs, True, True)
    for seq, tokens in zip(seqs, new, strict=True):
        seq.token_ids += tokens
    before = [t.clone() for t in caches(engine)]
    num_new = [len(tokens) for tokens in new]
    ref_tokens, ref_logprobs = module._module_forward(seqs, num_new, True)
    ref_caches = [t.clone() for t in caches(engine)]
    for t, saved in zip(caches(engine), before, strict=True):
        t.copy_(saved)
    tokens, logprobs = native._native_forward(seqs, num_new)
    assert tokens == ref_tokens
    assert logprobs == pytest.approx(ref_logprobs, abs=1e-5)
    for ours, ref in zip(caches(engine), ref_caches, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for i in range(len(prompts)):
        module.release(("s", i))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_native_step_matches_the_modules_for_every_family(family, checkpoints, make_engine):
    engine = make_engine(str(checkpoints[family]), num_blocks=64, enable_prefix_caching=False)
    with torch.no_grad():  # random biases (the checkpoints' are zero): the bias path counts
        gen = torch.Generator().manual_seed(0)
        for module in engine.model.modules():
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.5)
    prompts = [list(range(3, 40)), list(range(50, 61)), [7] * 17]
    compare_paths(engine, prompts, [[5], [9, 10, 11], [12, 13]])


def test_native_step_matches_the_modules_on_the_bundled_draft(make_engine):
    engine = make_engine(DRAFT, num_blocks=64, enable_prefix_caching=False)
    ids = engine.tokenizer("What is 12 + 30?").input_ids
    compare_paths(engine, [ids, ids[:5]], [[14], [20, 21, 22, 23]])


def test_unsupported_models_and_bad_input_are_refused(make_engine):
    bf16 = make_engine(DRAFT, num_blocks=16, dtype="bfloat16")
    assert "fp32" in unsupported_reason(bf16.model)
    with pytest.raises(ValueError, match="fp32"):
        DecodeStep(bf16.model, bf16.block_manager.block_size)

    engine = make_engine(DRAFT, num_blocks=16)
    step = DecodeStep(engine.model, engine.block_manager.block_size)
    with pytest.raises(ValueError, match="one position"):
        step.run([1, 2], [0], [[0]])
    with pytest.raises(ValueError, match="one position"):
        step.run([], [], [])
    with pytest.raises(ValueError, match="outside"):
        step.run([1], [16], [[0]])  # position 16 needs a second block
    with pytest.raises(ValueError, match="outside"):
        step.run([1], [-1], [[0]])
    with pytest.raises(ValueError, match="block ids"):
        step.run([1], [3], [[16]])  # engine.num_blocks is 16: no block 16
    with pytest.raises(ValueError, match="refused"):
        step.run([10_000], [0], [[0]])  # not a token id of this model
