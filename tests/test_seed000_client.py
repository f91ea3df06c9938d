"""Seed 000 (NexRL's inference service clients) against a real rlserve server on loopback.

Each snippet of the seed runs with only the import changed (`nexrl.inference_service_client`
-> `rlserve.client`) and the bundled model in place of the hub names. The Tinker/Weaver
service cannot be reached here: `RemoteApiInferenceServiceClient` runs over a local
stand-in service holder (`StandInServiceHolder` below: the method signatures and reply of
NexRL's TinkerServiceHolder, sampling on the real server).
"""

from __future__ import annotations

import threading

import httpx
import pytest
from omegaconf import DictConfig, OmegaConf

from rlserve.client import (
    Client,
    InferenceServiceClient,
    OpenAIInferenceServiceClient,
    RemoteApiInferenceServiceClient,
    WeightSyncController,
    apply_chat_template,
    hf_tokenizer,
)
from rlserve.client.service_clients import parsed_tool_arguments
from tests.support.servers import TEST_MODEL, RunningServer, shared_server, wait_until

MESSAGES = [{"role": "user", "content": "What is 7 + 8?"}]
NEXRL_KEYS = {"prompt_tokens", "response_tokens", "response_logprobs"}


@pytest.fixture(scope="module")
def server(make_engine, pytestconfig) -> RunningServer:
    """The bundled model; the seed's snippets ask for up to 100 tokens (the main test
    server caps max_tokens at 64)."""
    from rlserve.server import ServerConfig

    def make() -> RunningServer:
        engine = make_engine(TEST_MODEL, max_num_seqs=16)
        return RunningServer(engine, ServerConfig(max_tokens=128, max_batch=16))

    return shared_server("seed000", make, pytestconfig)


@pytest.fixture(scope="module")
def model(server: RunningServer) -> str:
    """The bundled model's path: what the seed's "meta-llama/Llama-3.1-8B-Instruct" is here
    (the request's model and the tokenizer's path)."""
    return str(server.engine.model_path)


@pytest.fixture(scope="module")
def config(server: RunningServer, model: str) -> DictConfig:
    """The seed's usage example config."""
    return DictConfig(
        {
            "inference_service": {
                "api_key": "EMPTY",
                "base_url": server.url,
                "model": model,
                "max_tokens": 16,
            },
            "temperature": 0.7,
        }
    )


@pytest.fixture(scope="module")
def client(config: DictConfig) -> OpenAIInferenceServiceClient:
    with OpenAIInferenceServiceClient(config) as client:
        yield client


def check_training_data(response: dict, tokenizer) -> None:
    """`nexrl_train` holds `rlserve_train`'s lists, and they describe the reply."""
    train, ours = response["nexrl_train"], response["rlserve_train"]
    assert set(train) == NEXRL_KEYS
    assert train == {key: ours[key] for key in NEXRL_KEYS}
    tokens, logprobs = train["response_tokens"], train["response_logprobs"]
    assert tokens and len(logprobs) == len(tokens) == response["usage"]["completion_tokens"]
    assert all(lp <= 0.0 for lp in logprobs)
    assert len(train["prompt_tokens"]) == response["usage"]["prompt_tokens"]
    choice = response["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    assert tokenizer.decode(tokens) == text  # special tokens kept: the text covers every token


def test_usage_example(client: OpenAIInferenceServiceClient) -> None:
    response = client.completion(prompt="What is 2+2?", max_tokens=100)
    assert response["object"] == "text_completion" and response["id"]
    assert response["choices"][0]["finish_reason"] in ("stop", "length")
    check_training_data(response, client.tokenizer)
    # The server's prompt ids are the tokenizer's: no re-tokenisation mismatch.
    expected = client.tokenizer.encode("What is 2+2?")
    assert response["nexrl_train"]["prompt_tokens"] == expected

    messages = [{"role": "user", "content": "Hello!"}]
    chat = client.generate(messages=messages, max_tokens=100)
    assert chat["object"] == "chat.completion"
    check_training_data(chat, client.tokenizer)
    assert chat["nexrl_train"]["prompt_tokens"] == client.apply_chat_template(
        messages, tokenize=True
    )


def test_openai_style_access(client: OpenAIInferenceServiceClient) -> None:
    direct = client.completion(prompt="Hello", max_tokens=100, temperature=0)
    created = client.completions.create(prompt="Hello", max_tokens=100, temperature=0)
    assert created["nexrl_train"] == direct["nexrl_train"]  # greedy: the same tokens
    chat = client.chat.completions.create(messages=MESSAGES, max_tokens=8)
    check_training_data(chat, client.tokenizer)
    with pytest.raises(ValueError, match="stream"):
        client.completions.create(prompt="Hello", stream=True)


def test_config_defaults_reach_the_server(client: OpenAIInferenceServiceClient) -> None:
    """`max_tokens` comes from `inference_service`, `temperature` from the top level."""
    response = client.completion(prompt="1 + 1 =")
    assert response["usage"]["completion_tokens"] <= 16
    assert client.config.temperature == 0.7 and client.config.max_tokens == 16


def test_apply_chat_template(client: OpenAIInferenceServiceClient) -> None:
    text = client.apply_chat_template(MESSAGES)
    assert isinstance(text, str) and "7 + 8" in text
    ids = client.apply_chat_template(MESSAGES, tokenize=True)
    assert ids == client.tokenizer.encode(text, add_special_tokens=False)
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    assert "calculator" in client.apply_chat_template(MESSAGES, tools=tools)
    no_prompt = client.apply_chat_template(MESSAGES, add_generation_prompt=False)
    assert text.startswith(no_prompt) and len(no_prompt) < len(text)


def test_yaml_config_of_the_seed(server: RunningServer, model: str) -> None:
    """The seed's "OpenAI-Compatible (vLLM)" YAML, loaded with omegaconf (an interpolation
    into another section, as NexRL's run configs have, is resolved)."""
    yaml = f"""
inference_service:
  backend: "openai"
  api_key: "EMPTY"
  base_url: "{server.url}"
  model: "{model}"
  max_tokens: ${{data.max_response_length}}
  max_retries: 10
  freeze_for_weight_sync: true
  model_tag: "default"
temperature: 0.7
data:
  max_response_length: 8
"""
    with OpenAIInferenceServiceClient(OmegaConf.create(yaml)) as client:
        assert isinstance(client, InferenceServiceClient)
        assert client.model_tag == "default" and client.config.max_retries == 10
        assert client.config.max_tokens == 8
        assert client.completion(prompt="3 + 4 =")["usage"]["completion_tokens"] <= 8


def test_plain_dict_config_with_nexrl_keys(server: RunningServer, model: str) -> None:
    """A plain dict works too; NexRL's run-config keys (`identifier`, `weight_type`, a
    null `tokenizer`, `host:port` without a scheme, other top-level sections) are taken."""
    host = server.url.removeprefix("http://")
    config = {
        "inference_service": {
            "identifier": "actor",
            "base_url": host,
            "model": model,
            "tokenizer": None,
            "backend": "sglang",
            "weight_type": "sglang_nckpt",
        },
        "temperature": 0.0,
        "num_workers": 4,
    }
    with OpenAIInferenceServiceClient(config) as client:
        assert client.model_tag == "actor"
        reply = client.completion(prompt="2 + 2 =", max_tokens=4)
        check_training_data(reply, client.tokenizer)


@pytest.mark.parametrize(
    ("section", "top", "named"),
    [
        ({"max_token": 5}, {}, "inference_service.max_token"),
        ({"max_tokens": 0}, {}, "inference_service.max_tokens"),
        ({"max_retries": "3"}, {}, "inference_service.max_retries"),
        ({"backend": "mlx"}, {}, "inference_service.backend"),
        ({"freeze_for_weight_sync": "yes"}, {}, "inference_service.freeze_for_weight_sync"),
        ({}, {"temperature": "hot"}, "temperature"),
        ({"model": None}, {}, "inference_service.model"),
        ({"base_url": None}, {}, "inference_service.base_url"),
    ],
)
def test_bad_config_names_the_key(config: DictConfig, section: dict, top: dict, named: str) -> None:
    data = OmegaConf.to_container(config)
    data["inference_service"].update(section)
    data.update(top)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")) as err:
        OpenAIInferenceServiceClient(data)
    assert err.value.field == named


def test_config_without_the_section_or_not_a_mapping() -> None:
    with pytest.raises(ValueError, match="inference_service"):
        OpenAIInferenceServiceClient({"temperature": 0.7})
    with pytest.raises(ValueError, match="dict or a DictConfig"):
        OpenAIInferenceServiceClient(["inference_service"])


def test_bad_calls_raise_and_the_client_keeps_working(
    client: OpenAIInferenceServiceClient,
) -> None:
    with pytest.raises(ValueError, match="prompt"):
        client.completion(prompt=123)
    with pytest.raises(ValueError, match="messages"):
        client.generate(messages="hello")
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        client.generate(messages=["hello"])
    with pytest.raises(ValueError, match="controller"):
        client.set_weight_sync_controller(object(), "default")
    check_training_data(client.completion(prompt="5 + 5 =", max_tokens=4), client.tokenizer)


def served_prompt_tokens(server: RunningServer) -> int:
    return httpx.get(server.url + "/metrics?format=json").json()["prompt_tokens"]


def test_freeze_blocks_while_a_sync_is_in_progress(
    server: RunningServer, config: DictConfig
) -> None:
    controller = WeightSyncController()
    results: list[dict] = []
    with OpenAIInferenceServiceClient(config) as client:
        client.set_weight_sync_controller(controller, "default")
        controller.begin_sync("default")
        before = served_prompt_tokens(server)
        worker = threading.Thread(
            target=lambda: results.append(client.completion(prompt="8 + 1 =", max_tokens=4))
        )
        worker.start()
        # The call is parked on the controller's condition (CPython's Condition._waiters):
        # it has not been sent, and it runs once the sync ends.
        assert wait_until(lambda: len(controller._cond._waiters) == 1)
        assert served_prompt_tokens(server) == before and not results
        controller.end_sync("default", version=1)
        worker.join(timeout=60)
    assert len(results) == 1 and results[0]["nexrl_train"]["response_tokens"]
    assert served_prompt_tokens(server) > before


def test_other_model_tags_and_no_freeze_do_not_wait(config: DictConfig) -> None:
    controller = WeightSyncController()
    controller.begin_sync("critic")
    with OpenAIInferenceServiceClient(config) as client:
        client.set_weight_sync_controller(controller, "actor")
        assert client.completion(prompt="1 + 2 =", max_tokens=2)["nexrl_train"]
    data = OmegaConf.to_container(config)
    data["inference_service"]["freeze_for_weight_sync"] = False
    with OpenAIInferenceServiceClient(data) as client:
        client.set_weight_sync_controller(controller, "critic")  # syncing, but no freeze
        assert client.completion(prompt="1 + 2 =", max_tokens=2)["nexrl_train"]
    controller.end_sync("critic")


class NexRLStyleController:
    """NexRL's own controller interface: `check_rollout_service_status(model_tag)` answers
    "block" while a sync is due or running, then "continue" (a stand-in for it)."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.asked: list[str] = []

    def check_rollout_service_status(self, model_tag: str) -> str:
        self.asked.append(model_tag)
        return self.statuses.pop(0)


def test_nexrl_controller_is_polled_until_continue(config: DictConfig) -> None:
    with OpenAIInferenceServiceClient(config) as client:
        controller = NexRLStyleController(["block", "continue"])
        client.set_weight_sync_controller(controller)
        assert client.completion(prompt="4 + 4 =", max_tokens=2)["nexrl_train"]
        assert controller.asked == ["default", "default"]
        client.set_weight_sync_controller(NexRLStyleController(["paused"]))
        with pytest.raises(ValueError, match="unknown status"):
            client.completion(prompt="4 + 4 =", max_tokens=2)


def test_hf_tokenizer_with_the_seed_signature(model: str) -> None:
    tokenizer = hf_tokenizer(model, correct_pad_token=True, correct_gemma2=True)
    assert tokenizer.pad_token_id is not None
    assert tokenizer.encode("7 + 8") == hf_tokenizer(model).encode("7 + 8")


def test_parse_tool_call_arguments() -> None:
    messages = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "calculator", "arguments": '{"expression": "7+8"}'}},
                {"function": {"name": "noop", "arguments": ""}},
                {"function": {"name": "raw", "arguments": "not json"}},
            ],
        }
    ]
    parsed = parsed_tool_arguments(messages)
    calls = [c["function"]["arguments"] for c in parsed[0]["tool_calls"]]
    assert calls == [{"expression": "7+8"}, {}, "not json"]
    assert isinstance(messages[0]["tool_calls"][0]["function"]["arguments"], str)  # a copy


class StandInServiceHolder:
    """A stand-in for NexRL's TinkerServiceHolder (the Tinker service cannot be reached
    here): the same methods, arguments and reply dict; it tokenises as the holder does
    (no special tokens, no chat template for prompts) and samples on the real server."""

    def __init__(self, server: RunningServer, tokenizer) -> None:
        self._client = Client(server.url, max_retries=0)
        self._tokenizer = tokenizer
        self.calls: list[dict] = []

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True, tokenize=False):
        return apply_chat_template(
            self._tokenizer, messages, tools or None, tokenize, add_generation_prompt
        )

    def sample_from_prompt(self, prompt, max_tokens, temperature=1.0, num_samples=1) -> dict:
        self.calls.append({"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature})
        return self._sample(
            self._tokenizer.encode(prompt, add_special_tokens=False), max_tokens, temperature
        )

    def _sample(self, prompt_tokens: list[int], max_tokens: int, temperature: float) -> dict:
        reply = self._client.generate_rl(
            input_ids=prompt_tokens, max_tokens=max_tokens, temperature=temperature
        )
        return {
            "response": self._tokenizer.decode(reply["completion_ids"], skip_special_tokens=True),
            "prompt_tokens": prompt_tokens,
            "response_tokens": reply["completion_ids"],
            "response_logprobs": reply["logprobs"],
            "finish_reason": reply["finish_reason"],
            "tool_string": None,
            "is_valid": True,
        }


class StandInHolderWithMessages(StandInServiceHolder):
    """The holder with `sample_from_messages` (NexRL's Tinker holder has both)."""

    def sample_from_messages(
        self, messages, max_tokens, temperature=1.0, num_samples=1, tools=None
    ) -> dict:
        ids = self.apply_chat_template(messages, tools=tools, tokenize=True)
        self.calls.append({"messages": messages, "tools": tools})
        return self._sample(ids, max_tokens, temperature)


TINKER_YAML = """
inference_service:
  backend: "tinker"
  base_url: "http://tinker-service:8000"
  model: "{model}"
  max_tokens: 8
  freeze_for_weight_sync: true
temperature: 0.7
"""


@pytest.fixture
def holder(server: RunningServer, client: OpenAIInferenceServiceClient):
    holder = StandInHolderWithMessages(server, client.tokenizer)
    yield holder
    holder._client.close()


def test_remote_api_client_over_a_service_holder(holder, model: str) -> None:
    remote = RemoteApiInferenceServiceClient(OmegaConf.create(TINKER_YAML.format(model=model)))
    with pytest.raises(ValueError, match="set_service_holder"):
        remote.completion(prompt="2 + 3 =")
    remote.set_service_holder(holder)
    reply = remote.completion(prompt="2 + 3 =")
    assert holder.calls[-1] == {"prompt": "2 + 3 =", "max_tokens": 8, "temperature": 0.7}
    assert reply["object"] == "text_completion" and reply["model"] == model
    check_training_data_text(reply, holder._tokenizer)
    chat = remote.generate(messages=MESSAGES, max_tokens=4, temperature=0)
    assert chat["object"] == "chat.completion" and chat["usage"]["completion_tokens"] <= 4
    assert chat["nexrl_train"]["prompt_tokens"] == remote.apply_chat_template(
        MESSAGES, tokenize=True
    )
    check_training_data_text(chat, holder._tokenizer)
    assert remote.chat.completions.create(messages=MESSAGES, max_tokens=2)["nexrl_train"]


def check_training_data_text(reply: dict, tokenizer) -> None:
    """The holder's lists, under both keys; the text is decoded without special tokens."""
    assert reply["nexrl_train"] == {k: reply["rlserve_train"][k] for k in NEXRL_KEYS}
    tokens = reply["nexrl_train"]["response_tokens"]
    assert tokens and len(reply["nexrl_train"]["response_logprobs"]) == len(tokens)
    choice = reply["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    assert text == tokenizer.decode(tokens, skip_special_tokens=True)


def test_holder_without_sample_from_messages_gets_the_rendered_chat(
    server: RunningServer, client: OpenAIInferenceServiceClient, model: str
) -> None:
    holder = StandInServiceHolder(server, client.tokenizer)
    config = {"inference_service": {"backend": "weaver", "max_tokens": 4}}
    remote = RemoteApiInferenceServiceClient(config, holder)
    chat = remote.generate(messages=MESSAGES)
    assert holder.calls[-1]["prompt"] == client.apply_chat_template(MESSAGES)
    assert chat["model"] == "remote-api" and chat["nexrl_train"]["response_tokens"]
    holder._client.close()


def test_remote_api_client_bad_input(holder, model: str) -> None:
    config = OmegaConf.create(TINKER_YAML.format(model=model))
    with pytest.raises(ValueError, match="sample_from_prompt"):
        RemoteApiInferenceServiceClient(config, object())
    remote = RemoteApiInferenceServiceClient(config, holder)
    with pytest.raises(ValueError, match="'top_p' is not supported"):
        remote.completion(prompt="1 + 1 =", top_p=0.5)
    with pytest.raises(ValueError, match="prompt"):
        remote.completion(prompt=[1, 2])
    bad = StandInServiceHolder.__new__(StandInServiceHolder)
    bad.sample_from_prompt = lambda **kw: {"response": "x", "finish_reason": "stop"}
    remote.set_service_holder(bad)
    with pytest.raises(ValueError, match="prompt_tokens"):
        remote.completion(prompt="1 + 1 =")
    remote.set_service_holder(holder)
    assert remote.completion(prompt="1 + 1 =")["nexrl_train"]["response_tokens"]


def test_remote_api_client_freezes_too(holder, model: str) -> None:
    remote = RemoteApiInferenceServiceClient(OmegaConf.create(TINKER_YAML.format(model=model)))
    remote.set_service_holder(holder)
    controller = NexRLStyleController(["block", "continue"])
    remote.set_weight_sync_controller(controller, "actor")
    calls = len(holder.calls)
    assert remote.completion(prompt="6 + 1 =")["nexrl_train"]
    assert controller.asked == ["actor", "actor"] and len(holder.calls) == calls + 1


def test_a_subclass_of_the_abstract_base() -> None:
    """A user's own client (NexRL's base takes no config): the abstract methods must be
    written; the freeze and the OpenAI-style wrappers come with the base."""

    class Echo(InferenceServiceClient):
        def completion(self, prompt, **kwargs):
            self._before_call()
            return {"choices": [{"text": prompt}], "kwargs": kwargs}

        def generate(self, messages, **kwargs):
            return {"choices": [{"message": messages[-1]}]}

        def apply_chat_template(
            self, messages, tools=None, add_generation_prompt=True, tokenize=False
        ):
            return "".join(m["content"] for m in messages)

    with pytest.raises(TypeError, match="abstract"):
        InferenceServiceClient()
    echo = Echo()
    controller = NexRLStyleController(["continue"])
    echo.set_weight_sync_controller(controller, "policy")
    assert echo.completions.create(prompt="hi", max_tokens=3) == {
        "choices": [{"text": "hi"}],
        "kwargs": {"max_tokens": 3},
    }
    assert controller.asked == ["policy"]
    assert echo.chat.completions.create(messages=MESSAGES)["choices"][0]["message"] == MESSAGES[0]
