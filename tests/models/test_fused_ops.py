"""The fused CPU ops (models/fused.py + fused_ops.cpp) against the torch reference ops they
replace, per op and end to end: the same bits (the reference itself is held to
transformers by tests/test_parity.py and tests/test_bf16.py)."""

import pytest
import torch
import torch.nn.functional as F

from rlserve.models import fused

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def kernel_built():
    if fused.kernel() is None:  # no g++ here: the reference path is all there is
        pytest.skip(f"fused ops kernel unavailable: {fused.KERNEL_ERROR}")


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """The kernel rounds as the torch ops do, op by op, and sums squares in torch's order:
    the same bits, fp32 and bf16 alike (bf16 is where a flip would show: one ulp of a
    normalised value moves logprobs by ~0.1 in the bundled model)."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert torch.equal(ours, ref), f"{(ours != ref).sum().item()} of {ref.numel()} differ"


def random(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 3).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,dim", [(1, 256), (16, 512), (300, 1024), (3, 70), (2, 4096)])
def test_add_rms_norm_matches_reference(dtype, rows, dim):
    x, res = random(rows, dim, dtype=dtype, seed=0), random(rows, dim, dtype=dtype, seed=1)
    weight = random(dim, dtype=dtype, seed=2)
    res_ref = res.clone()
    ref = fused.rms_norm_reference(res_ref.add_(x), weight, 1e-6)
    ours_res = res.clone()
    ours = fused.add_rms_norm(x.clone(), ours_res, weight, 1e-6)
    assert torch.equal(ours_res, res_ref)  # the residual add rounds as torch's does
    assert_close(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_leaves_its_input(dtype):
    x, weight = random(5, 256, dtype=dtype, seed=3), random(256, dtype=dtype, seed=4)
    before = x.clone()
    out = fused.rms_norm(x, weight, 1e-5)
    assert torch.equal(x, before)
    assert_close(out, fused.rms_norm_reference(x, weight, 1e-5))


def reference_qk(qkv, heads, kv_heads, d, norms, angles):
    q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    q, k = q.reshape(-1, heads, d), k.reshape(-1, kv_heads, d)
    if norms is not None:
        q, k = (
            fused.rms_norm_reference(q, norms[0], 1e-6),
            fused.rms_norm_reference(k, norms[1], 1e-6),
        )
    return (*fused.apply_rope_reference(q, k, *angles), v.reshape(-1, kv_heads, d))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("rows,heads,kv_heads,d", [(1, 4, 2, 64), (16, 8, 4, 64), (40, 16, 8, 128)])
def test_qk_norm_rope_matches_reference(dtype, qk_norm, rows, heads, kv_heads, d):
    qkv = random(rows, (heads + 2 * kv_heads) * d, dtype=dtype, seed=5)
    angle = torch.rand(rows, d // 2, generator=torch.Generator().manual_seed(6)) * 100
    angle = torch.cat([angle, angle], dim=-1)
    angles = (angle.cos().to(dtype), angle.sin().to(dtype))
    norms = None
    if qk_norm:
        norms = (random(d, dtype=dtype, seed=7), random(d, dtype=dtype, seed=8), 1e-6)
    ref = reference_qk(qkv.clone(), heads, kv_heads, d, norms, angles)
    v_before = ref[2].clone()
    ours = fused.qk_norm_rope(qkv.clone(), heads, kv_heads, d, norms, angles)
    for got, want in zip(ours[:2], ref[:2], strict=True):
        assert_close(got, want)
    assert torch.equal(ours[2], v_before)  # v is passed through untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_is_exact(dtype):
    gate_up = random(7, 2 * 96, dtype=dtype, seed=9)
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(fused.silu_mul(gate_up), F.silu(gate) * up)


def test_non_contiguous_input_takes_the_reference_path():
    x = random(8, 512, dtype=torch.float32, seed=10)[:, ::2]  # stride 2: not for the kernel
    res, weight = random(8, 256, dtype=torch.float32, seed=11), torch.ones(256)
    ref = fused.rms_norm_reference(res + x, weight, 1e-6)
    assert_close(fused.add_rms_norm(x, res, weight, 1e-6), ref)


def test_disabled_kernel_gives_the_reference(monkeypatch):
    monkeypatch.setenv("RLSERVE_FUSED_OPS", "0")
    x, weight = (
        random(4, 256, dtype=torch.float32, seed=12),
        random(256, dtype=torch.float32, seed=13),
    )
    x_before = x.clone()
    out = fused.add_rms_norm(x, None, weight, 1e-6)
    assert torch.equal(out, fused.rms_norm_reference(x_before, weight, 1e-6))


PROMPT = [5, 17, 42, 99, 3, 250, 7, 11, 12, 400, 8]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_fused_matches_reference_end_to_end(make_engine, monkeypatch, dtype):
    engine = make_engine(dtype=dtype, num_blocks=64, block_size=8)
    fused_logits = engine.logits(PROMPT)
    monkeypatch.setenv("RLSERVE_FUSED_OPS", "0")
    engine.reset_prefix_cache()
    ref_logits = engine.logits(PROMPT)
    assert torch.equal(fused_logits, ref_logits)
