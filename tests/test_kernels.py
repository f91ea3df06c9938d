"""The CPU kernel choices: oneDNN linear equals F.linear; decode groups respect their caps."""

import pytest
import torch
import torch.nn.functional as F

from rlserve.engine.model_runner import MAX_PADDING, decode_groups
from rlserve.models import linear as linear_mod
from rlserve.models.linear import linear


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "f_linear"])
def test_linear_matches_f_linear_and_sees_in_place_updates(onednn, monkeypatch):
    """Both fp32 paths (oneDNN takes the big weights), whatever size these weights are."""
    if onednn and not linear_mod.HAS_ONEDNN:
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(linear_mod, "ONEDNN", onednn)
    monkeypatch.setattr(linear_mod, "ONEDNN_MIN_WEIGHT", 0 if onednn else 1 << 62)
    torch.manual_seed(0)
    weight, bias = torch.randn(300, 64), torch.randn(300)
    for x in (torch.randn(1, 64), torch.randn(37, 64), torch.randn(2, 5, 64)):
        expected = F.linear(x, weight, bias)
        assert torch.allclose(linear(x, weight, bias), expected, rtol=1e-5, atol=1e-4)
    x = torch.randn(3, 64)
    before = linear(x, weight)
    with torch.inference_mode():
        weight.mul_(2)  # what update_weights does: copy into the same storage
    assert torch.allclose(linear(x, weight), 2 * before, rtol=1e-5, atol=1e-4)
    assert linear(torch.randn(0, 64), weight).shape == (0, 300)


def test_decode_groups_cover_every_row_within_padding_and_size_caps():
    lengths = [5, 16, 17, 40, 100, 101, 300, 310, 320, 900]
    decodes = [(row, list(range(-(-n // 16))), n) for row, n in enumerate(lengths)]
    for cap in (None, 20, 2):
        groups = decode_groups(decodes, 16, cap, torch.device("cpu"))
        rows = sorted(r for g in groups for r in g.rows.tolist())
        assert rows == list(range(len(lengths)))
        for g in groups:
            batch, width = g.block_tables.shape
            needed = sum(-(-lengths[r] // 16) for r in g.rows.tolist())
            assert batch * width <= MAX_PADDING * needed
            assert cap is None or batch == 1 or batch * width <= cap
            assert g.mask.sum().item() == sum(lengths[r] for r in g.rows.tolist())
    assert len(decode_groups(decodes, 16, 1, torch.device("cpu"))) == len(lengths)


def test_matmul_decode_attention_equals_sdpa():
    """The CUDA decode path (two matmuls) computes what SDPA computes (checked on CPU)."""
    from rlserve.models.attention import decode_attention_matmul

    torch.manual_seed(0)
    batch, heads, kv_heads, span, dim = 3, 8, 2, 40, 16
    q = torch.randn(batch, heads, dim)
    keys, values = torch.randn(batch, span, kv_heads, dim), torch.randn(batch, span, kv_heads, dim)
    mask = (torch.arange(span) < torch.tensor([40, 17, 1])[:, None])[:, None, None, :]
    expected = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=mask,
        scale=0.3,
        enable_gqa=True,
    ).squeeze(2)
    got = decode_attention_matmul(q, keys, values, mask, 0.3)
    assert torch.allclose(got, expected, atol=1e-5)
