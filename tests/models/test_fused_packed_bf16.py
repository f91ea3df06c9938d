"""The opt-in packed bf16 weights of `Linear` (RLSERVE_BF16_PACKED=1): the same outputs as
the dense weight, and a weight update is seen by the very next call."""

import pytest
import torch

from rlserve.models import linear as linear_mod
from rlserve.models.linear import Linear

pytestmark = pytest.mark.skipif(not linear_mod.CAN_PACK, reason="no oneDNN weight reorder")


@pytest.fixture
def packed(monkeypatch):
    monkeypatch.setenv("RLSERVE_BF16_PACKED", "1")


def bf16_linear(out_features: int = 96, in_features: int = 64, bias: bool = False) -> Linear:
    torch.manual_seed(0)
    return Linear(in_features, out_features, bias=bias).to(torch.bfloat16)


@pytest.mark.parametrize("batch", [1, 16, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_matches_dense(packed, batch, bias):
    layer = bf16_linear(bias=bias)
    x = torch.randn(batch, 64).to(torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
        assert layer._packed is not None  # the packed path ran
        dense = torch.nn.functional.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(out.float(), dense.float(), rtol=1e-2, atol=1e-2)


def test_in_place_update_repacks(packed):
    layer = bf16_linear()
    x = torch.randn(4, 64).to(torch.bfloat16)
    with torch.inference_mode():
        layer(x)
        first = layer._packed
    with torch.no_grad():  # how the loader writes: a copy into a slice (q_proj of qkv)
        layer.weight[:32].copy_(torch.zeros(32, 64))
    with torch.inference_mode():
        out = layer(x)
    assert layer._packed is not first
    assert torch.equal(out[:, :32], torch.zeros(4, 32, dtype=torch.bfloat16))


def test_new_data_repacks(packed):
    layer = bf16_linear()
    x = torch.randn(2, 64).to(torch.bfloat16)
    with torch.inference_mode():
        layer(x)
    layer.weight.data = torch.ones(96, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
    want = x.float().sum(-1, keepdim=True).expand(2, 96)
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-2)  # bf16 output


def test_off_by_default_and_for_fp32(monkeypatch):
    monkeypatch.delenv("RLSERVE_BF16_PACKED", raising=False)
    layer = bf16_linear()
    with torch.inference_mode():
        layer(torch.randn(2, 64).to(torch.bfloat16))
    assert layer._packed is None
    monkeypatch.setenv("RLSERVE_BF16_PACKED", "1")
    fp32 = Linear(64, 8)
    with torch.inference_mode():
        fp32(torch.randn(2, 64))
    assert fp32._packed is None


PROMPT = [5, 17, 42, 99, 3, 250, 7]


def test_engine_update_reaches_packed_weights(packed, make_engine, monkeypatch):
    """RL's case: logits after an update equal those of the dense path on the new weights."""
    engine = make_engine(dtype="bfloat16", num_blocks=32, block_size=8)
    before = engine.logits(PROMPT)
    assert engine.model.layers[0].mlp.gate_up_proj._packed is not None
    down = engine.model.layers[0].mlp.down_proj.weight
    new = {"model.layers.0.mlp.down_proj.weight": down.detach().clone() * -2.0}
    engine.update_weights(new)
    engine.reset_prefix_cache()
    after = engine.logits(PROMPT)
    monkeypatch.setenv("RLSERVE_BF16_PACKED", "0")
    engine.reset_prefix_cache()
    dense_after = engine.logits(PROMPT)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, dense_after, rtol=0, atol=0.05)
