"""Contract 6: bad input gets a clear ValueError naming the problem, and loses nothing."""

import json

import pytest

from rlserve import Engine, SamplingParams

BAD_PARAMS = [
    ("n", 0),
    ("n", 1.5),
    ("temperature", -0.1),
    ("temperature", "hot"),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_k", 0),
    ("top_k", -2),
    ("min_p", -0.1),
    ("min_p", 1.1),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("min_tokens", -1),
    ("stop", [""]),
    ("stop", [3]),
    ("stop_token_ids", [-1]),
    ("seed", "x"),
    ("logprobs", -2),
    ("prompt_logprobs", -2),
    ("ignore_eos", "yes"),
    ("include_stop_str_in_output", 1),
    ("skip_special_tokens", None),
]


@pytest.mark.parametrize(("field", "value"), BAD_PARAMS)
def test_invalid_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=5, max_tokens=3)


def test_over_long_prompt_names_both_lengths(qwen3):
    prompt = [1] * (qwen3.max_model_len + 3)
    with pytest.raises(ValueError, match=rf"{len(prompt)}.*{qwen3.max_model_len}"):
        qwen3.generate(prompt, SamplingParams(max_tokens=1))


def test_bad_prompts(qwen3):
    cases = [
        ([], "non-empty|empty"),
        ("", "empty"),
        ([1, 10**6], "vocabulary"),
        ([1, -1], "vocabulary"),
        (3.5, "prompt"),
        ([[1], 2.5], "prompt"),
        ([True, 2], "prompt"),
    ]
    for prompt, message in cases:
        with pytest.raises(ValueError, match=message):
            qwen3.generate(prompt, SamplingParams(max_tokens=1))


def test_bad_request_in_a_batch_loses_nothing(qwen3):
    good = [5, 6, 7]
    with pytest.raises(ValueError, match="vocabulary"):
        qwen3.generate([good, [10**6]], SamplingParams(max_tokens=2))
    # The good request was withdrawn, nothing is queued, and the engine still works.
    assert not qwen3.has_unfinished_requests()
    out = qwen3.generate(good, SamplingParams(max_tokens=2, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 2


def test_mismatched_params_list_and_types(qwen3):
    with pytest.raises(ValueError, match="2 SamplingParams for 1 prompts"):
        qwen3.generate(["a"], [SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match="SamplingParams"):
        qwen3.add_request([1, 2], {"max_tokens": 3})


def test_duplicate_request_id(qwen3):
    qwen3.add_request([1, 2], SamplingParams(max_tokens=1), request_id="dup")
    with pytest.raises(ValueError, match="dup"):
        qwen3.add_request([1, 2], SamplingParams(max_tokens=1), request_id="dup")
    while qwen3.has_unfinished_requests():
        qwen3.step()


def test_request_that_cannot_fit_the_kv_cache(checkpoints, make_engine):
    engine = make_engine(checkpoints["qwen2"], num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="KV blocks"):
        engine.generate([1] * 10, SamplingParams(max_tokens=20))


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(ValueError, match="not a local checkpoint"):
        Engine(tmp_path / "nope")


def test_unsupported_architecture(tmp_path, checkpoints):
    config = json.loads((checkpoints["llama"] / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    config["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        Engine(tmp_path)


def test_bad_engine_config(checkpoints):
    for kwargs, message in [
        ({"dtype": "float8"}, "dtype"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"block_size": -1}, "block_size"),
        ({"device": "nodev"}, "device"),
    ]:
        with pytest.raises(ValueError, match=message):
            Engine(checkpoints["llama"], **kwargs)
    with pytest.raises(TypeError):
        Engine(checkpoints["llama"], not_a_field=1)
