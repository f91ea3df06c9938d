"""Weight updates, per-token versions, pause modes and staleness (the RL control plane)."""

import pytest
import torch
from safetensors.torch import save_file

from rlserve import Engine, SamplingParams
from tests.support.checkpoints import build_checkpoint, load_hf
from tests.support.numeric import max_abs_diff

PROMPTS = [[5, 17, 42, 99, 3, 250, 7], list(range(40, 75))]
GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint_b(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("b") / "qwen3-b", "qwen3", seed=1)


@pytest.fixture()
def engine(checkpoints, make_engine):
    return make_engine(checkpoints["qwen3"], num_blocks=256, block_size=4)


def _outputs(engine, params=GREEDY):
    engine.reset_prefix_cache()  # same computation path every time: exact comparisons
    return [
        (o.outputs[0].token_ids, o.outputs[0].logprobs) for o in engine.generate(PROMPTS, params)
    ]


def _same(a, b, tol):
    assert [t for t, _ in a] == [t for t, _ in b]
    assert max(max_abs_diff(la, lb) for (_, la), (_, lb) in zip(a, b, strict=True)) <= tol


@pytest.mark.parametrize("source", ["state_dict", "named_parameters", "folder", "file"])
def test_update_equals_fresh_engine(engine, checkpoint_b, make_engine, source):
    fresh = make_engine(checkpoint_b, num_blocks=256, block_size=4)
    if source == "state_dict":
        weights = load_hf(checkpoint_b).state_dict()
    elif source == "named_parameters":
        weights = load_hf(checkpoint_b).named_parameters()  # a stream of (name, tensor)
    else:
        weights = checkpoint_b if source == "folder" else checkpoint_b / "model.safetensors"
    assert engine.update_weights(weights) == 1 == engine.policy_version
    _same(_outputs(engine), _outputs(fresh), 1e-6)
    assert all(
        v == 1 for o in engine.generate(PROMPTS, GREEDY) for v in o.outputs[0].weight_versions
    )


def test_bad_updates_change_nothing(engine, checkpoint_b, tmp_path):
    before = _outputs(engine)
    good = load_hf(checkpoint_b).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    bad_cases = [
        ({**good, "model.layers.0.mlp.nonsense.weight": torch.zeros(3)}, "unknown weight"),
        ({**good, name: torch.zeros(3, 3)}, f"{name} has shape"),
        ({**good, name: good[name].double()}, f"{name} has dtype"),
        ({**good, name: "not a tensor"}, f"{name} is a str"),
    ]
    truncated = tmp_path / "truncated.safetensors"
    save_file({k: v.contiguous() for k, v in good.items()}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    bad_cases += [(truncated, "cannot read safetensors"), (tmp_path / "missing", "not exist")]
    for weights, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            engine.update_weights(weights)
        assert engine.policy_version == 0
    with pytest.raises(ValueError, match="version"):
        engine.update_weights(good, version=0)
    _same(_outputs(engine), before, 0.0)


def test_keep_mode_switches_versions_at_the_right_token(engine, checkpoint_b):
    weights = load_hf(checkpoint_b).state_dict()
    rid = engine.add_request(PROMPTS[0], GREEDY)
    tokens, versions = [], []
    while len(tokens) < 5:
        for d in engine.step():
            tokens += d.outputs[0].token_ids
            versions += d.outputs[0].weight_versions
    engine.pause("keep")
    assert engine.step() == [] and engine.num_running == 1  # frozen with its KV
    engine.update_weights(weights, version=7)
    engine.resume()
    while engine.has_unfinished_requests():
        for d in engine.step():
            assert d.request_id == rid
            versions += d.outputs[0].weight_versions
    assert versions == [0] * 5 + [7] * 11


def test_recompute_kv_reprefills_under_new_weights(engine, checkpoint_b, make_engine):
    weights = load_hf(checkpoint_b).state_dict()
    rid = engine.add_request(PROMPTS[1], GREEDY)
    tokens = []
    while len(tokens) < 4:
        tokens += [t for d in engine.step() for t in d.outputs[0].token_ids]
    computed = engine.stats()["prompt_tokens_computed"]
    engine.update_weights(weights, recompute_kv=True)
    while engine.has_unfinished_requests():
        tokens += [t for d in engine.step() if d.request_id == rid for t in d.outputs[0].token_ids]
    assert engine.stats()["prompt_tokens_computed"] == computed + len(PROMPTS[1])
    # After the update, each token is what B's weights pick given all tokens so far.
    fresh = make_engine(checkpoint_b, num_blocks=256, block_size=4)
    next_after_4 = (
        fresh.generate(PROMPTS[1] + tokens[:4], SamplingParams(temperature=0, max_tokens=1))[0]
        .outputs[0]
        .token_ids[0]
    )
    assert tokens[4] == next_after_4


def test_abort_mode_returns_partials(engine):
    ids = [engine.add_request(p, GREEDY) for p in PROMPTS]
    engine.step()
    engine.step()
    engine.pause("abort")
    finals = {d.request_id: d for d in engine.step()}
    assert set(finals) == set(ids)
    for d in finals.values():
        assert d.finished and d.outputs[0].finish_reason == "abort"
    queued = engine.add_request(PROMPTS[0], GREEDY)  # accepted, runs after resume
    assert engine.step() == []
    engine.resume()
    while engine.has_unfinished_requests():
        engine.step()
    assert not engine.has_unfinished_requests() and queued


def test_wait_mode_loses_nothing(engine, checkpoint_b):
    first = engine.add_request(PROMPTS[0], GREEDY)
    versions = {first: engine.step()[0].outputs[0].weight_versions}
    engine.pause("wait")
    second = engine.add_request(PROMPTS[1], GREEDY)  # waits for the new weights
    versions[second] = []
    while engine.num_running:
        for d in engine.step():
            versions[d.request_id] += d.outputs[0].weight_versions
    assert versions[first] == [0] * 16 and versions[second] == []
    engine.update_weights(load_hf(checkpoint_b).state_dict())
    engine.resume()
    while engine.has_unfinished_requests():
        for d in engine.step():
            versions[d.request_id] += d.outputs[0].weight_versions
    assert versions[second] == [1] * 16


def test_staleness(engine):
    same = {n: t.clone() for n, t in engine.model.hf_weight_targets().items()}
    with pytest.raises(ValueError, match="needs policy version >= 3"):
        engine.add_request(PROMPTS[0], GREEDY, min_policy_version=3)
    with pytest.raises(ValueError, match="max_staleness"):
        engine.add_request(PROMPTS[0], GREEDY, max_staleness=-1)
    tolerant = engine.add_request(PROMPTS[0], GREEDY, max_staleness=1)
    strict = engine.add_request(PROMPTS[1], GREEDY, max_staleness=0)
    engine.step()
    engine.update_weights(same)
    finals = {}
    while engine.has_unfinished_requests():
        for d in engine.step():
            if d.finished:
                finals[d.request_id] = d.outputs[0]
    assert finals[strict].finish_reason == "abort" and "stale" in finals[strict].stop_reason
    assert finals[tolerant].finish_reason == "length"
    assert engine.add_request(PROMPTS[0], GREEDY, min_policy_version=1)
    while engine.has_unfinished_requests():
        engine.step()


def test_pause_bad_mode_and_generate_while_paused(engine):
    with pytest.raises(ValueError, match="pause mode"):
        engine.pause("later")
    assert engine.paused is None
    engine.pause("keep")
    with pytest.raises(RuntimeError, match="paused"):
        engine.generate(PROMPTS[0], GREEDY)
    engine.resume()
    assert len(engine.generate(PROMPTS[0], GREEDY)[0].outputs[0].token_ids) == 16


def test_update_from_transformers_checkpoint_dtype_mismatch_is_named(checkpoints):
    engine = Engine(checkpoints["qwen2"], num_blocks=16, block_size=8)
    bf16 = {k: v.to(torch.bfloat16) for k, v in load_hf(checkpoints["qwen2"]).state_dict().items()}
    with pytest.raises(ValueError, match="dtype torch.bfloat16"):
        engine.update_weights(bf16)


def test_check_version_says_what_an_update_would_set_and_changes_nothing(engine):
    now = engine.policy_version
    assert engine.check_version(None) == now + 1
    assert engine.check_version(now + 5) == now + 5
    for bad in (now, True, "7", 1.5):
        with pytest.raises(ValueError, match="version must be an integer > the current"):
            engine.check_version(bad)
    assert engine.policy_version == now
