"""Issue 10 defect 3: what would fail inside step() is refused at add_request, and a request
that still fails inside step() fails alone while the rest of its batch goes on. Also the
engine parts of defect 14: score takes token ids only, trust_remote_code reaches the model
loader, and prefix-cache blocks are keyed by a collision-resistant hash."""

from __future__ import annotations

import hashlib

import pytest

from rlserve import SamplingParams
from rlserve.engine.block_manager import BlockManager
from rlserve.engine.prefix_constraint import TokenTexts

GOOD_PROMPTS = [[5, 6, 7, 8], [12, 13, 14, 15, 16, 17]]
GOOD = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(checkpoints, make_engine):
    return make_engine(checkpoints["qwen3"], num_blocks=256, block_size=4)


def _run_all(engine, first_outputs: list | None = None) -> dict[str, object]:
    """Step until idle; by request id: (all its token ids, its final delta)."""
    tokens: dict[str, list[int]] = {}
    finals: dict[str, object] = {}
    pending = list(first_outputs or [])
    while pending or engine.has_unfinished_requests():
        for out in pending or engine.step():
            for c in out.outputs:
                tokens.setdefault(out.request_id, []).extend(c.token_ids)
            if out.finished:
                finals[out.request_id] = out
        pending = []
    return {rid: (tokens.get(rid, []), out) for rid, out in finals.items()}


@pytest.fixture(scope="module")
def expected(engine) -> list[list[int]]:
    """What the good prompts generate with nothing else in the batch."""
    return [engine.generate(p, GOOD)[0].outputs[0].token_ids for p in GOOD_PROMPTS]


# ---- refused at admission -------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        (SamplingParams(stop_token_ids=[10**9], min_tokens=2, max_tokens=4), "stop_token_ids"),
        (SamplingParams(stop_token_ids=[10**9]), "stop_token_ids.*vocabulary"),
        (SamplingParams(n=300, max_tokens=4), r"^n \(300\) exceeds the 256 sequences"),
    ],
)
def test_params_that_cannot_run_on_this_model_are_refused(engine, params, needle):
    with pytest.raises(ValueError, match=needle):
        engine.add_request([1, 2, 3], params)
    assert not engine.has_unfinished_requests()


def test_n_above_max_num_seqs_is_refused_instead_of_waiting_forever(checkpoints, make_engine):
    small = make_engine(checkpoints["qwen3"], num_blocks=64, block_size=4, max_num_seqs=4)
    with pytest.raises(ValueError, match=r"^n \(5\) exceeds the 4 sequences.*max_num_seqs"):
        small.generate([1, 2, 3], SamplingParams(n=5, max_tokens=2))
    assert len(small.generate([1, 2, 3], SamplingParams(n=4, max_tokens=2))[0].outputs) == 4


@pytest.mark.parametrize("choice", ['{"city": "\u6771\u4eac"}', "\U0001f600 ok", "caf\u00e9"])
def test_prefix_choices_outside_ascii_are_admitted_and_forced(bundled, choice):
    # One-byte tokens of a multi-byte character decode alone to "\ufffd": matching is on bytes.
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=12, prefix_choices=[choice])
    out = bundled.generate("hello", params)[0].outputs[0]
    assert out.text.startswith(choice), out.text


def test_prefix_choices_no_token_can_spell_are_refused(bundled):
    # Below id 100 the bundled vocabulary has no byte of the snowman's UTF-8 (e2 98 83).
    texts = TokenTexts(bundled.tokenizer, vocab_size=100)
    assert texts.dead_end(["\u2603"]) == ""
    assert texts.dead_end(["ab"]) is None
    assert TokenTexts(bundled.tokenizer).dead_end(["\u2603"]) is None


def test_min_tokens_banning_the_whole_vocabulary_is_refused(engine):
    vocab = engine.model.config.vocab_size
    params = SamplingParams(stop_token_ids=list(range(vocab)), min_tokens=1, max_tokens=2)
    with pytest.raises(ValueError, match="ban every token"):
        engine.add_request([1, 2, 3], params)


def test_tiny_temperature_is_greedy_as_in_vllm(engine, expected):
    assert SamplingParams(temperature=1e-40).temperature == 0.0
    assert SamplingParams(temperature=1e-5).temperature == 1e-5  # vLLM's _SAMPLING_EPS
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=float("inf"))
    tiny = SamplingParams(temperature=1e-40, max_tokens=6, ignore_eos=True)
    outs = engine.generate(GOOD_PROMPTS, tiny)
    assert [o.outputs[0].token_ids for o in outs] == expected
    greedy = engine.generate(GOOD_PROMPTS[0], GOOD)[0].outputs[0]
    assert outs[0].outputs[0].logprobs == pytest.approx(greedy.logprobs, abs=1e-4)  # T = 1


@pytest.mark.parametrize(
    "bad",
    [
        SamplingParams(stop_token_ids=[10**9], min_tokens=2, max_tokens=4),
        SamplingParams(temperature=1e-40, n=2, max_tokens=4),
    ],
)
def test_bad_request_beside_good_ones_is_refused_and_they_finish(engine, expected, bad):
    ids = [engine.add_request(p, GOOD) for p in GOOD_PROMPTS]
    first = engine.step()  # the good ones are running when the bad one arrives
    try:
        bad_id = engine.add_request([1, 2, 3], bad)
    except ValueError:
        bad_id = None  # refused: the right answer for an impossible request
    results = _run_all(engine, first)
    assert [results[i][0] for i in ids] == expected
    assert all(results[i][1].error is None for i in ids)
    if bad_id is not None:  # accepted (tiny T is greedy): it must have run fine too
        assert results[bad_id][1].error is None


# ---- failing inside step(): only the culprit -------------------------------------------
# These corrupt one request after it was admitted: the stand-in for an input that a
# future validation gap lets through (no mock: the real engine runs the corrupt request).


def test_request_failing_in_sampling_fails_alone(engine, expected):
    ids = [engine.add_request(p, GOOD) for p in GOOD_PROMPTS]
    bad_id = engine.add_request([1, 2, 3], SamplingParams(n=3, min_tokens=2, max_tokens=4))
    engine._requests[bad_id].params.stop_token_ids = [10**9]  # slipped past admission
    results = _run_all(engine)
    assert [results[i][0] for i in ids] == expected
    assert all(results[i][1].error is None for i in ids)
    failed = results[bad_id][1]
    assert "IndexError" in failed.error
    assert [c.finish_reason for c in failed.outputs] == ["abort"] * 3  # all n samples
    assert engine.block_manager.num_used_blocks == 0


def test_request_failing_in_the_forward_pass_fails_alone(engine, expected):
    ids = [engine.add_request(p, GOOD) for p in GOOD_PROMPTS]
    bad_id = engine.add_request([1, 2, 3], GOOD)
    engine._requests[bad_id].seqs[0].token_ids[1] = 10**9  # an embedding row that is not
    results = _run_all(engine)
    assert [results[i][0] for i in ids] == expected
    assert "IndexError" in results[bad_id][1].error
    assert engine.block_manager.num_used_blocks == 0


def test_generate_returns_a_failed_request_with_its_error_and_the_others_whole(engine, expected):
    ids = [engine.add_request(p, GOOD) for p in GOOD_PROMPTS]
    bad = engine.add_request([1, 2, 3], SamplingParams(n=2, min_tokens=2, max_tokens=4))
    engine._requests[bad].params.stop_token_ids = [10**9]  # slipped past admission
    outs = engine._run_to_completion([*ids, bad])  # what generate() returns
    assert [o.outputs[0].token_ids for o in outs[:2]] == expected
    assert all(o.error is None for o in outs[:2])
    assert "IndexError" in outs[2].error
    assert [c.finish_reason for c in outs[2].outputs] == ["abort", "abort"]


# ---- Engine.score takes token ids only ---------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "response"),
    [("What is 2+2?", "4"), ([1, 2], "4"), (["hi", "there"], [[1], [2]])],
)
def test_score_with_text_says_token_ids_are_required(engine, prompt, response):
    with pytest.raises(ValueError, match="token ids, not text"):
        engine.score(prompt, response)


def test_score_refusing_a_later_pair_leaves_nothing_queued(engine):
    with pytest.raises(ValueError, match="vocabulary"):
        engine.score([[1, 2], [3, 4]], [[5], [10**9]])
    assert not engine.has_unfinished_requests()  # the first pair was withdrawn


# ---- prefix cache: a collision-resistant block hash ----------------------------------------


def test_block_hash_is_sha256_of_the_whole_chain():
    key = (3, "adapter-a", 2)  # Python's hash of a str (a LoRA name) changes per process
    h1 = BlockManager.hash_block(None, [1, 2, 3, 4], key)
    h2 = BlockManager.hash_block(h1, [5, 6, 7, 8], key)
    tokens = b"".join(t.to_bytes(8, "little") for t in (5, 6, 7, 8))
    encoding = h1 + (4).to_bytes(8, "little") + tokens + repr(key).encode()
    assert h2 == hashlib.sha256(encoding).digest()  # reproducible, collision-resistant
    assert (
        len(
            {
                h2,
                BlockManager.hash_block(h1, [5, 6, 7, 9], key),
                BlockManager.hash_block(h1, [5, 6, 7, 8], (4, "adapter-a", 2)),
                BlockManager.hash_block(None, [5, 6, 7, 8], key),
            }
        )
        == 4
    )


def test_trust_remote_code_reaches_load_model(tmp_path):
    from rlserve.config import EngineConfig
    from rlserve.models.loader import load_model

    folder = _checkpoint_with_remote_config(tmp_path, EngineConfig().model_path)
    import torch

    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(folder, torch.float32, torch.device("cpu"), 64)
    model = load_model(folder, torch.float32, torch.device("cpu"), 64, trust_remote_code=True)
    assert model.config.architecture == "Qwen3ForCausalLM"


def _checkpoint_with_remote_config(tmp_path, bundled) -> str:
    """The bundled checkpoint with a config class that lives in the checkpoint folder."""
    import json
    import shutil
    from pathlib import Path

    folder = tmp_path / "remote"
    shutil.copytree(Path(bundled), folder)
    (folder / "configuration_remote.py").write_text(
        "from transformers import Qwen3Config\n\n\n"
        "class RemoteQwen3Config(Qwen3Config):\n    model_type = 'remote_qwen3'\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="remote_qwen3", auto_map={"AutoConfig": "configuration_remote.RemoteQwen3Config"}
    )
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)
