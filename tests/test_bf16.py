"""bf16 engines: `dtype="auto"`, the logprob contract against transformers in bf16, and
weight updates into a bf16 engine. Bounds measured on the bundled model (docs: README)."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import rlserve.config as config_module
from rlserve import SamplingParams
from rlserve.config import BUNDLED_MODEL, EngineConfig, auto_dtype, cpu_has_bf16_dot
from rlserve.models.loader import cast_floating
from rlserve.server.cli import build_parser, config_from_args, engine_options
from tests.support.numeric import max_abs_diff

PROMPTS = [list(range(5, 40)), [11, 12, 13], list(range(100, 180))]
NEW_TOKENS = 24
# Teacher-forced logprobs equal transformers' bf16 ones bit for bit on this project's CPUs
# (same kernels, same order); the bound leaves room for other kernels. bf16 vs fp32 differs
# by ~0.1 here, so the bound still tells the two apart.
TEACHER_FORCED_BOUND = 0.02
# Decode computes each token's K/V with a batch-1 matmul, scoring with one prefill matmul:
# in bf16 the two round differently (measured <= 0.031 on the bundled model).
DECODE_VS_SCORE_BOUND = 0.08


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine(dtype="bfloat16", num_blocks=64)


@pytest.fixture(scope="module")
def hf_bf16():
    return AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, dtype=torch.bfloat16).eval()


def _hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_auto_dtype_on_cpu_follows_the_bf16_probe(monkeypatch):
    # The CPU probe is monkeypatched: one machine has only one answer.
    monkeypatch.setattr(config_module, "cpu_has_bf16_dot", lambda: True)
    assert EngineConfig(dtype="auto").dtype == "bfloat16"
    assert EngineConfig(dtype="auto").torch_dtype == torch.bfloat16
    monkeypatch.setattr(config_module, "cpu_has_bf16_dot", lambda: False)
    assert EngineConfig(dtype="auto").dtype == "float32"
    assert EngineConfig().dtype == "float32"  # the default stays exact


def test_auto_dtype_on_cuda_follows_bf16_support(monkeypatch):
    # No GPU here: torch.cuda's answers are monkeypatched.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_dtype("cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_dtype("cuda:0") == "float32"
    assert auto_dtype("meta") == "float32"


def test_cpu_probe_agrees_with_the_kernel_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = cpuinfo.read_text().split()
    assert cpu_has_bf16_dot() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_serve_flag_dtype_auto_reaches_the_engine_config(monkeypatch):
    monkeypatch.setattr(config_module, "cpu_has_bf16_dot", lambda: True)  # as above
    args = build_parser().parse_args(["--dtype", "auto"])
    options = engine_options(config_from_args(args), args)
    assert options["dtype"] == "auto"
    assert EngineConfig(**options).dtype == "bfloat16"


@pytest.mark.parametrize("dtype", ["bf16", "float64", "", None, 16])
def test_bad_dtype_names_the_field(dtype):
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineConfig(dtype=dtype)


def test_weights_and_kv_cache_are_bf16_logits_fp32(engine):
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    attn = engine.model.layers[0].self_attn
    assert attn.k_cache.dtype == attn.v_cache.dtype == torch.bfloat16
    assert engine.logits(PROMPTS[1]).dtype == torch.float32


def test_greedy_tokens_and_logprobs_match_transformers_bf16(engine, hf_bf16):
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=0)
    outs = engine.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        tokens = out.outputs[0].token_ids
        with torch.no_grad():
            ref = hf_bf16.generate(
                torch.tensor([prompt]),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert tokens == ref[0, len(prompt) :].tolist()
        full = prompt + tokens
        ours = engine.logits(full).log_softmax(-1)
        assert max_abs_diff(ours, _hf_logprobs(hf_bf16, full)) <= TEACHER_FORCED_BOUND
        scored = engine.score(prompt, tokens)
        assert max_abs_diff(out.outputs[0].logprobs, scored) <= DECODE_VS_SCORE_BOUND


def test_score_is_log_softmax_of_fp32_logits_over_temperature(engine):
    prompt, response = PROMPTS[0], [7, 8, 9, 10]
    logits = engine.logits(prompt + response)[len(prompt) - 1 : -1]
    expected = (logits / 0.7).log_softmax(-1).gather(1, torch.tensor(response)[:, None])[:, 0]
    assert max_abs_diff(engine.score(prompt, response, temperature=0.7), expected) <= 1e-5


def test_bf16_differs_from_fp32_by_more_than_the_bound(engine, bundled):
    # Guards the bound above: if it were loose enough to pass fp32 numbers, it would be idle.
    ids = PROMPTS[2]
    gap = max_abs_diff(engine.logits(ids).log_softmax(-1), bundled.logits(ids).log_softmax(-1))
    assert gap > TEACHER_FORCED_BOUND


@pytest.mark.parametrize("source_dtype", [torch.float32, torch.bfloat16])
def test_update_weights_from_fp32_or_bf16_tensors(make_engine, source_dtype):
    engine = make_engine(dtype="bfloat16", num_blocks=16)
    hf = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, dtype=source_dtype)
    name = "model.layers.0.mlp.up_proj.weight"
    update = {name: hf.state_dict()[name] * 2}
    if source_dtype != torch.bfloat16:
        with pytest.raises(ValueError, match=f"{name} has dtype torch.float32"):
            engine.update_weights(update)  # the engine itself takes only its dtype
        assert engine.policy_version == 0
    items, casts = cast_floating(engine.model, update.items())  # as the server casts
    assert casts == ({(source_dtype, torch.bfloat16)} if source_dtype != torch.bfloat16 else set())
    before = engine.logits(PROMPTS[1])
    assert engine.update_weights(items) == 1
    target = engine.model.layers[0].mlp.gate_up_proj.weight[engine.model.config.intermediate_size :]
    assert torch.equal(target, update[name].to(torch.bfloat16))
    assert max_abs_diff(engine.logits(PROMPTS[1]), before) > 0
