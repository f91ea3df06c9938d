"""LoRA adapters: parity with peft, mixed batches, reload, unload, bad adapters."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from rlserve import SamplingParams
from tests.support.checkpoints import load_hf
from tests.support.numeric import max_abs_diff

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = [5, 17, 42, 99, 3, 250, 7, 8, 9, 10]


def make_adapter(base_path, out_dir, seed, **lora_kwargs):
    torch.manual_seed(seed)
    model = get_peft_model(load_hf(base_path), LoraConfig(init_lora_weights=False, **lora_kwargs))
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def adapters(checkpoints, tmp_path_factory):
    root, base = tmp_path_factory.mktemp("lora"), checkpoints["qwen3"]
    return {
        "a": make_adapter(base, root / "a", 1, r=4, lora_alpha=8, target_modules=ALL),
        "b": make_adapter(
            base,
            root / "b",
            2,
            r=8,
            lora_alpha=16,
            use_rslora=True,
            target_modules=["q_proj", "v_proj", "down_proj"],
        ),
        "c": make_adapter(base, root / "c", 3, r=4, lora_alpha=8, target_modules=ALL),
    }


@pytest.fixture(scope="module")
def engine(checkpoints, make_engine, adapters):
    engine = make_engine(checkpoints["qwen3"], num_blocks=256, block_size=4)
    engine.load_lora("a", adapters["a"])
    engine.load_lora("b", adapters["b"])
    return engine


def peft_logits(base_path, adapter_path, tokens):
    model = PeftModel.from_pretrained(load_hf(base_path), adapter_path).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("name", ["a", "b"])
def test_logits_match_peft(engine, checkpoints, adapters, name):
    ref = peft_logits(checkpoints["qwen3"], adapters[name], PROMPT)
    ours = engine.logits(PROMPT, lora_name=name)
    assert max_abs_diff(ours, ref) <= 1e-4
    base = engine.logits(PROMPT)
    assert max_abs_diff(base, ref) > 1e-2  # the adapter really changes the output


def test_two_adapters_in_one_batch_match_their_references(engine):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    mixed = engine.generate([PROMPT, PROMPT, PROMPT], params, lora_name=["a", "b", None])
    for out, name in zip(mixed, ["a", "b", None], strict=True):
        alone = engine.generate(PROMPT, params, lora_name=name)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        scored = engine.score(PROMPT, out.outputs[0].token_ids, lora_name=name)
        assert max_abs_diff(scored, out.outputs[0].logprobs) < 1e-5
    assert len({tuple(o.outputs[0].token_ids) for o in mixed}) == 3


def test_reload_changes_outputs_bumps_version_and_skips_old_prefixes(engine, adapters):
    prompt = list(range(1, 30))
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    engine.load_lora("r", adapters["a"])
    before = engine.generate(prompt, params, lora_name="r")[0].outputs[0]
    version = engine.policy_version
    hits = engine.stats()["prefix_cache_hit_tokens"]
    new_version = engine.load_lora("r", adapters["c"])
    assert new_version == engine.policy_version == version + 1
    after = engine.generate(prompt, params, lora_name="r")[0].outputs[0]
    assert engine.stats()["prefix_cache_hit_tokens"] == hits  # old prefix not reused
    assert after.token_ids != before.token_ids
    assert after.weight_versions == [new_version] * 6
    engine.unload_lora("r")


def test_unload_and_unknown_adapter(engine, adapters):
    engine.load_lora("tmp", adapters["a"])
    engine.unload_lora("tmp")
    with pytest.raises(ValueError, match="unknown LoRA adapter 'tmp'"):
        engine.generate(PROMPT, SamplingParams(max_tokens=1), lora_name="tmp")
    with pytest.raises(ValueError, match="unknown LoRA adapter"):
        engine.unload_lora("tmp")
    rid = engine.add_request(PROMPT, SamplingParams(max_tokens=3), lora_name="a")
    with pytest.raises(ValueError, match="in use"):
        engine.unload_lora("a")
    engine.abort(rid)
    engine.step()


def unreadable_adapter(folder: Path, config: dict) -> Path:
    """An adapter folder with `config` and weights that are not safetensors."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")
    return folder


def test_bad_adapters_are_refused(engine, adapters, tmp_path):
    with pytest.raises(ValueError, match="not a PEFT adapter"):
        engine.load_lora("x", tmp_path)
    bad = unreadable_adapter(tmp_path / "bad", {"r": 4, "lora_alpha": 8})
    with pytest.raises(ValueError, match="cannot read adapter"):
        engine.load_lora("x", bad)
    from safetensors.torch import save_file

    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 7),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(128, 4),
        },
        str(bad / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match="q_proj of layer 0"):
        engine.load_lora("x", bad)
    with pytest.raises(ValueError, match="name"):
        engine.load_lora("", adapters["a"])
    assert "x" not in engine.adapters


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "JSON object"),
        ({"r": 0}, "r must be a positive integer"),
        ({"r": "4"}, "r must be a positive integer"),
        ({"r": True}, "r must be a positive integer"),
        ({"r": 4, "lora_alpha": float("inf")}, "lora_alpha must be a finite number"),
    ],
)
def test_bad_adapter_configs_are_a_value_error(engine, adapters, tmp_path, config, message):
    bad = tmp_path / "cfg"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes(
        (adapters["a"] / "adapter_model.safetensors").read_bytes()
    )
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        engine.load_lora("cfg", bad)
    assert "cfg" not in engine.adapters


def test_new_policy_bumps_the_version_on_a_first_load(engine, adapters):
    version = engine.policy_version
    assert engine.load_lora("fresh", adapters["a"]) == version  # a plain add: same policy
    assert engine.load_lora("policy", adapters["a"], new_policy=True) == version + 1
    assert engine.policy_version == version + 1
    engine.unload_lora("fresh")
    engine.unload_lora("policy")


def test_a_new_adapter_under_an_unloaded_name_never_reuses_the_old_ones_kv(
    engine, checkpoints, make_engine, adapters
):
    prompt = list(range(5, 45))  # 10 full blocks of 4: cached under the first adapter
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=0, ignore_eos=True)
    engine.load_lora("same", adapters["a"])
    engine.generate(prompt, params, lora_name="same")
    engine.unload_lora("same")
    engine.load_lora("same", adapters["c"])  # a first load again: no version bump
    reloaded = engine.generate(prompt, params, lora_name="same")[0]
    engine.unload_lora("same")
    fresh = make_engine(checkpoints["qwen3"], num_blocks=256, block_size=4)
    fresh.load_lora("same", adapters["c"])
    expected = fresh.generate(prompt, params, lora_name="same")[0].outputs[0]
    assert reloaded.num_cached_tokens == 0
    assert reloaded.outputs[0].token_ids == expected.token_ids
    assert reloaded.outputs[0].logprobs == pytest.approx(expected.logprobs, abs=1e-5)


def test_adapter_config_is_checked_before_the_weights_are_read(engine, tmp_path):
    bad = unreadable_adapter(tmp_path / "bad_config", {"r": 0, "lora_alpha": 8})
    with pytest.raises(ValueError, match="r must be a positive integer"):
        engine.load_lora("x", bad)


def test_a_missing_lora_alpha_is_peft_s_default():
    from rlserve.models.lora import check_adapter_config

    default = LoraConfig().lora_alpha  # what PEFT loads when the config does not say
    assert check_adapter_config("a", {"r": 4}) == (4, default / 4)
    assert check_adapter_config("a", {"r": 4, "lora_alpha": 16, "use_rslora": True}) == (4, 8.0)
    with pytest.raises(ValueError, match="DoRA"):
        check_adapter_config("a", {"r": 4, "use_dora": True})
