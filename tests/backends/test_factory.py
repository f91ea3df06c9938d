"""BackendConfig and create_backend: every field checked (a ValueError naming it), "auto"
decided from the checkpoint's model_type, each kind built from one word; and `complete`'s
prompt handling and seed expansion, written once for every backend."""

from __future__ import annotations

import json

import pytest

from rlserve import SamplingParams
from rlserve.backends import (
    BackendConfig,
    BackendUnsupported,
    EngineBackend,
    HuggingFaceBackend,
    complete,
    create_backend,
    prompt_token_ids,
)
from rlserve.backends.complete import sample_seed
from rlserve.config import BUNDLED_MODEL


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"kind": "vllm"}, "kind"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "int8"}, "dtype"),
        ({"dialect": "openai"}, "dialect"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"max_model_len": True}, "max_model_len"),
        ({"model": 3}, "model"),
        ({"model": "/no/such/checkpoint"}, "model"),
        ({"base_url": ""}, "base_url"),
        ({"api_key": 5}, "api_key"),
        ({"lora_name": ""}, "lora_name"),
        ({"engine_options": ["num_blocks"]}, "engine_options"),
        ({"kind": "remote"}, "base_url"),
        ({"kind": "tinker"}, "sampling_client"),
    ],
)
def test_bad_config_fields_are_named(fields, name):
    with pytest.raises(ValueError, match=name) as info:
        BackendConfig(**fields)
    assert info.value.field == name


def test_create_backend_refuses_unknown_keywords_and_configs():
    with pytest.raises(ValueError, match="unknown backend option 'temprature'"):
        create_backend("native", temprature=0.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        create_backend("vllm")
    with pytest.raises(ValueError, match="config must be a BackendConfig"):
        create_backend(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="engine_options: set 'dtype'"):
        create_backend("native", engine_options={"dtype": "float16"})
    with pytest.raises(ValueError, match="num_blocks"):
        create_backend("native", engine_options={"num_blocks": 0})


def test_auto_is_native_for_the_families_the_engine_loads(tmp_path):
    assert BackendConfig().resolved_kind() == "native"  # the bundled model: qwen3
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert BackendConfig(model=str(tmp_path)).resolved_kind() == "huggingface"
    assert BackendConfig(kind="huggingface").resolved_kind() == "huggingface"


def test_each_local_kind_from_one_word():
    native = create_backend("auto", engine_options={"num_blocks": 32, "block_size": 8})
    assert type(native) is EngineBackend and native.name == "native"
    assert native.engine.config.num_blocks == 32
    native.close()
    native.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        native.score([([1, 2], [3])])
    hf = create_backend(BackendConfig(kind="huggingface"), dtype="auto", device="auto")
    assert type(hf) is HuggingFaceBackend and hf.name == "huggingface"
    assert hf.model.dtype.is_floating_point and hf.max_model_len == 1024
    hf.close()
    with pytest.raises(ValueError, match="lora_name"):
        create_backend("huggingface", lora_name="tuned")


def test_prompt_token_ids_for_each_prompt_form(bundled):
    tokenizer = bundled.tokenizer
    messages = [{"role": "user", "content": "What is 2+3?"}]
    assert prompt_token_ids(tokenizer, "1+1=") == tokenizer.encode("1+1=")
    assert prompt_token_ids(tokenizer, [5, 6]) == [5, 6]
    assert prompt_token_ids(tokenizer, messages) == bundled.render_chat(messages)
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {}}}]
    assert prompt_token_ids(tokenizer, messages, tools) == bundled.render_chat(messages, tools)
    for bad in ("", [], [1, "2"], [{"role": "user"}, 3], None, 7):
        with pytest.raises(ValueError, match="prompts"):
            prompt_token_ids(tokenizer, bad)


def test_complete_expands_n_with_derived_seeds(bundled):
    backend = EngineBackend(bundled)
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=9, n=3)
    (group,) = complete(backend, [[5, 17, 42]], params)
    for i, completion in enumerate(group):  # sample i is a plain n = 1 request with seed i
        single = SamplingParams(temperature=1.0, max_tokens=6, seed=sample_seed(9, i))
        assert (
            completion.token_ids == bundled.generate([[5, 17, 42]], single)[0].outputs[0].token_ids
        )
    assert sample_seed(9, 0) == 9 and sample_seed(None, 2) is None
    assert len({sample_seed(9, i) for i in range(100)}) == 100
    assert all(0 <= sample_seed(-4, i) < 2**63 for i in range(1, 5))
    with pytest.raises(ValueError, match="params must be a SamplingParams"):
        complete(backend, ["1+1="], {"temperature": 0})  # type: ignore[arg-type]


def test_backend_unsupported_names_backend_and_operation():
    error = BackendUnsupported("remote", "return logits", "servers return logprobs")
    assert str(error) == "the remote backend cannot return logits: servers return logprobs"
    assert (error.backend, error.operation) == ("remote", "return logits")
    assert isinstance(error, NotImplementedError)
    assert BUNDLED_MODEL.is_dir()


def test_remote_and_tinker_from_one_word(tmp_path, bundled):
    """create_backend wires the remote kind (a real rlserve server on loopback) and the
    tinker kind (over the local SamplingClient stand-in: the service cannot be reached)."""
    from rlserve.backends.remote import RemoteBackend
    from rlserve.backends.tinker import TinkerBackend
    from tests.support.remote_backends import ADMIN_KEY, LocalSamplingClient, remote_server

    with remote_server(tmp_path) as server:
        remote = create_backend("remote", base_url=server.url, admin_key=ADMIN_KEY)
        try:
            assert type(remote) is RemoteBackend and remote.name == "remote"
            ((out,),) = complete(remote, ["1+1="], SamplingParams(temperature=0, max_tokens=4))
            assert out.error is None and len(out.token_ids) == 4
        finally:
            remote.close()
    stand_in = LocalSamplingClient(bundled)
    try:
        tinker = create_backend("tinker", sampling_client=stand_in, max_model_len=512)
        assert type(tinker) is TinkerBackend and tinker.name == "tinker"
        assert tinker.max_model_len == 512
        ((out,),) = complete(tinker, [[5, 17]], SamplingParams(temperature=0, max_tokens=3))
        assert out.error is None and len(out.token_ids) == 3
    finally:
        stand_in.close()


@pytest.mark.parametrize("kind", ["native", "huggingface"])
def test_trust_remote_code_reaches_the_local_backends(kind: str) -> None:
    """The bundled checkpoint needs no code of its own, so it loads either way; the flag
    must arrive where the model is loaded."""
    backend = create_backend(kind, trust_remote_code=True)
    try:
        if kind == "native":
            assert backend.engine.config.trust_remote_code is True
        else:
            assert backend.tokenizer is not None and backend.model is not None
    finally:
        backend.close()
    with pytest.raises(ValueError, match="trust_remote_code"):
        create_backend(kind, trust_remote_code="yes")
