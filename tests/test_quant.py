"""int8 weight-only quantisation: the per-channel rounding bound, the kernel against a dense
reference, the int8 engine against fp32 (greedy tokens, logprob drift), weight updates that
re-quantise in place, LoRA on an int8 base, and bad input."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rlserve import SamplingParams
from rlserve.config import BUNDLED_MODEL, EngineConfig
from rlserve.models import int8_matmul
from rlserve.models.int8_build import KERNEL_ERROR, int8_kernel
from rlserve.models.int8_matmul import int8_linear
from rlserve.models.loader import iter_safetensors
from rlserve.models.quant import QuantizedLinear, dequantize, quantize_model, quantize_per_channel
from tests.test_lora import ALL, make_adapter

PROMPTS = [[3 + i, 40 + 7 * i, 9, 100 + i, 17] for i in range(6)]
GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
# Measured on the bundled model (fp32 vs int8, the greedy tokens of PROMPTS): 6/6 identical
# completions, max |dlogprob| 0.028, mean 0.0016. Bounds leave ~3x room.
MAX_DRIFT, MEAN_DRIFT = 0.1, 0.005


@pytest.fixture(scope="module")
def int8_engine(make_engine):
    return make_engine(quantization="int8")


def test_per_channel_rounding_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(37, 50) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different size
    w[5] = 0.0
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert int(q.abs().max()) <= 127
    torch.testing.assert_close(scale[6:], w[6:].abs().amax(1) / 127)
    error = (dequantize(q, scale, torch.float32) - w).abs()
    assert torch.all(error <= scale[:, None] / 2 * (1 + 1e-5))
    assert torch.all(q[5] == 0) and torch.isfinite(scale[5])
    q_torch, scale_torch = quantize_per_channel(w, use_kernel=False)
    assert torch.equal(q, q_torch) and torch.equal(scale, scale_torch)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 13, 32, 40, 70])
def test_int8_linear_matches_the_dequantised_weight(rows):
    torch.manual_seed(rows)
    w, bias = torch.randn(1031, 200), torch.randn(1031)  # N % 4 != 0, K % 16 != 0
    q, scale = quantize_per_channel(w)
    x = torch.randn(rows, 200)
    dense = dequantize(q, scale, torch.float32)
    ref = F.linear(x, dense, bias)
    # The VNNI kernel rounds each activation to a step of max|row| / 32767: at most half a
    # step per element, times the row's weights.
    bound = x.abs().amax(1, keepdim=True) / 65534 * dense.abs().sum(1) + 1e-4
    assert torch.all((int8_linear(x, q, scale, bias) - ref).abs() <= bound * 1.01)


def test_torch_fallback_gives_the_same_numbers(monkeypatch):
    torch.manual_seed(1)
    q, scale = quantize_per_channel(torch.randn(64, 96))
    x = torch.randn(2, 96)
    fast = int8_linear(x, q, scale)
    monkeypatch.setattr(int8_matmul, "int8_kernel", lambda: None)
    torch.testing.assert_close(int8_linear(x, q, scale), fast, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16"),
    reason="the int8 kernel needs AVX-512",
)
def test_the_kernel_builds_and_loads_on_an_avx512_cpu():
    assert int8_kernel() is not None


def test_bf16_linear_quantises_and_computes_in_bf16():
    torch.manual_seed(2)
    linear = torch.nn.Linear(64, 48, bias=False).to(torch.bfloat16)
    quantized = QuantizedLinear(linear)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    out = quantized(x)
    assert out.dtype == torch.bfloat16
    ref = F.linear(x.float(), quantized.weight.dequantize().float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_bad_quantization_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="quantization"):
        EngineConfig(quantization="int4")
    with pytest.raises(ValueError, match="quantization"):
        quantize_model(torch.nn.Module(), "fp8")
    with pytest.raises(ValueError, match="2-D float"):
        quantize_per_channel(torch.ones(4, dtype=torch.float32))


def test_int8_engine_keeps_head_and_embedding_float(int8_engine):
    model = int8_engine.model
    assert model.embed_tokens.weight.dtype == torch.float32
    layer = model.layers[0]
    for linear in (layer.self_attn.qkv_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
        assert isinstance(linear, QuantizedLinear) and linear.qweight.dtype == torch.int8
    assert not [n for n, _ in model.named_parameters() if n.endswith("proj.weight")]


def greedy_tokens(engine):
    return [out.outputs[0].token_ids for out in engine.generate(PROMPTS, GREEDY)]


def test_int8_engine_agrees_with_fp32_within_the_measured_drift(bundled, int8_engine):
    fp32_tokens = greedy_tokens(bundled)
    same = sum(a == b for a, b in zip(fp32_tokens, greedy_tokens(int8_engine), strict=True))
    assert same >= len(PROMPTS) - 1
    fp32 = bundled.score(PROMPTS, fp32_tokens)
    int8 = int8_engine.score(PROMPTS, fp32_tokens)
    drift = (torch.tensor(fp32) - torch.tensor(int8)).abs()  # same lengths: ignore_eos
    assert 0 < drift.max() < MAX_DRIFT and drift.mean() < MEAN_DRIFT


def perturbed_checkpoint(folder):
    """A copy of the bundled model with every weight moved by noise: (folder, weights)."""
    torch.manual_seed(3)
    weights = {n: t + 0.05 * torch.randn_like(t) for n, t in iter_safetensors(BUNDLED_MODEL)}
    shutil.copytree(BUNDLED_MODEL, folder, ignore=shutil.ignore_patterns("*.safetensors", "eval"))
    save_file(weights, str(folder / "model.safetensors"))
    return folder, weights


def test_update_weights_requantises_in_place(make_engine, tmp_path):
    engine = make_engine(quantization="int8")
    before = engine.logits(PROMPTS[0])
    folder, weights = perturbed_checkpoint(tmp_path / "new")
    engine.update_weights(weights)
    after = engine.logits(PROMPTS[0])
    assert (after - before).abs().max() > 0.1
    fresh = make_engine(folder, quantization="int8")
    assert torch.equal(after, fresh.logits(PROMPTS[0]))
    ours, theirs = engine.model.layers[1].mlp.gate_up_proj, fresh.model.layers[1].mlp.gate_up_proj
    assert torch.equal(ours.qweight, theirs.qweight) and torch.equal(ours.scale, theirs.scale)


def test_updating_one_slice_requantises_only_its_rows(make_engine):
    engine = make_engine(quantization="int8")
    attn = engine.model.layers[0].self_attn
    qkv = attn.qkv_proj
    old_q, old_scale = qkv.qweight.clone(), qkv.scale.clone()
    k_rows = slice(attn.q_size, attn.q_size + attn.kv_size)
    new_k = torch.randn(attn.kv_size, qkv.in_features)
    engine.update_weights({"model.layers.0.self_attn.k_proj.weight": new_k})
    torch.testing.assert_close(qkv.weight[k_rows].dequantize(), new_k, atol=0.02, rtol=0)
    unchanged = torch.ones(qkv.out_features, dtype=torch.bool)
    unchanged[k_rows] = False
    assert torch.equal(qkv.qweight[unchanged], old_q[unchanged])
    assert torch.equal(qkv.scale[unchanged], old_scale[unchanged])


def test_a_bad_update_changes_nothing(int8_engine):
    qkv = int8_engine.model.layers[0].self_attn.qkv_proj
    before = qkv.qweight.clone()
    good = torch.zeros(int8_engine.model.layers[0].self_attn.kv_size, qkv.in_features)
    with pytest.raises(ValueError, match="shape"):
        int8_engine.update_weights(
            {
                "model.layers.0.self_attn.k_proj.weight": good,
                "model.layers.0.self_attn.v_proj.weight": torch.zeros(3, 3),
            }
        )
    assert torch.equal(qkv.qweight, before)


def test_lora_on_an_int8_base_matches_fp32_lora_within_the_drift(bundled, make_engine, tmp_path):
    adapter = make_adapter(BUNDLED_MODEL, tmp_path / "a", 1, r=4, lora_alpha=8, target_modules=ALL)
    fp32 = make_engine()
    int8 = make_engine(quantization="int8")
    fp32.load_lora("a", adapter)
    int8.load_lora("a", adapter)
    tokens = PROMPTS[1]
    with_lora, without = int8.logits(tokens, lora_name="a"), int8.logits(tokens)
    assert (with_lora - without).abs().max() > 0.1  # the adapter really acts on the int8 base
    ref = fp32.logits(tokens, lora_name="a")
    drift = (with_lora.log_softmax(-1) - ref.log_softmax(-1)).abs().max()
    assert drift < MAX_DRIFT


def test_a_failed_build_falls_back_to_torch_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("RLSERVE_KERNEL_CACHE", str(tmp_path))  # nothing cached: a build is needed
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    int8_kernel.cache_clear()
    try:
        assert int8_kernel() is None and KERNEL_ERROR
        q, scale = quantize_per_channel(torch.randn(8, 32))  # torch ops still serve
        assert int8_linear(torch.randn(2, 32), q, scale).shape == (2, 8)
    finally:
        int8_kernel.cache_clear()
        KERNEL_ERROR.clear()
