"""Seed 001's `InferenceModule` over rlserve backends: every snippet of the seed document
(only the import changed; the bundled model in place of hub names), the generation cache,
teacher-forced logits / logprobs, tool calls, and bad input.

Nothing is mocked: the native engine, the Hugging Face backend and a real rlserve server on
loopback (standing in for the seed's vLLM) run the bundled model. The only wrapping is a
counter around `backend.generate`, to see whether a cache hit generated anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rlserve import GenerationResult, InferenceModule, ToolCall, create_inference_module
from rlserve.config import BUNDLED_MODEL
from tests.support.servers import RunningServer, main_server

MODEL = str(BUNDLED_MODEL)  # in place of the seed's "gpt2" / "meta-llama/Llama-2-7b-hf"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the seed writes device="cuda"
CALCULATOR = {  # seed-style tool definition of the tool the bundled model was trained on
    "name": "calculator",
    "description": "Evaluate an arithmetic expression.",
    "parameters": {"expression": "string"},
}
QUESTION = "What is 347 * 29?"
GREEDY = {"do_sample": False, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def native() -> Iterator[InferenceModule]:
    with InferenceModule(backend="native") as module:
        yield module


@pytest.fixture(scope="module")
def hf() -> Iterator[InferenceModule]:
    with InferenceModule(MODEL, backend="huggingface") as module:
        yield module


@pytest.fixture(scope="module")
def server(make_engine, pytestconfig) -> RunningServer:
    return main_server(make_engine, pytestconfig)


def counting(module: InferenceModule) -> list[int]:
    """Counts the requests `module`'s backend is asked to generate (the real backend runs)."""
    counts: list[int] = []
    real = module.backend.generate

    def generate(requests: list[Any], on_done: Any) -> None:
        counts.append(len(requests))
        real(requests, on_done)

    module.backend.generate = generate  # type: ignore[method-assign]
    return counts


# --- the seed's snippets ------------------------------------------------------------------


def test_quick_start_basic_usage() -> None:
    inference = InferenceModule(model_name=MODEL, backend="huggingface", device=DEVICE)
    result = inference.generate("The future of AI is", max_new_tokens=50, temperature=0.8)
    print(result.texts[0])
    assert isinstance(result, GenerationResult) and len(result.texts) == 1
    assert 1 <= len(result.token_ids[0]) <= 50
    assert result.metadata["backend"] == "huggingface"
    assert inference.backend.model.device.type == DEVICE


def test_factory_function_auto_backend() -> None:
    inference = create_inference_module(MODEL, backend="auto", dtype="bfloat16")
    # auto: rlserve's native engine loads the bundled (Qwen3) checkpoint
    assert inference.backend.name == "native"
    result = inference.generate("2+3=", **GREEDY)
    assert result.texts[0] == inference.backend.tokenizer.decode(
        result.token_ids[0], skip_special_tokens=True
    )
    inference.close()


def test_generate_example_with_logprobs(native: InferenceModule) -> None:
    inference = native
    result = inference.generate(
        ["What is AI?", "Explain ML"],
        max_new_tokens=100,
        temperature=0.7,
        top_p=0.9,
        return_logprobs=True,
    )
    for text in result.texts:
        print(text)
    assert len(result.texts) == len(result.logprobs) == 2
    for ids, logprobs in zip(result.token_ids, result.logprobs, strict=True):
        assert logprobs.shape == (len(ids),) and logprobs.dtype == torch.float32
        assert bool((logprobs <= 0).all())


def test_get_logits_kl_divergence_snippet(native: InferenceModule, hf: InferenceModule) -> None:
    policy, reference = native, hf  # the same weights: the KL is ~0
    prompts = ["What is 2+2?", "What is 17+25?"]
    responses = ["2+2 = 4", "17+25 = 42"]
    policy_logits = policy.get_logits(prompts, responses)
    ref_logits = reference.get_logits(prompts, responses)
    kl_div = F.kl_div(
        F.log_softmax(policy_logits, dim=-1),
        F.softmax(ref_logits, dim=-1),
        reduction="batchmean",
    )
    vocab = len(native.backend.tokenizer)
    assert policy_logits.shape == ref_logits.shape
    assert policy_logits.shape[0] == 2 and policy_logits.shape[2] == vocab
    assert abs(kl_div.item()) < 1e-4


def test_get_logprobs_policy_gradient_snippet(hf: InferenceModule) -> None:
    inference = hf
    prompts, responses = ["What is 2+2?", "What is 5+5?"], ["4", "5 + 5 = 10"]
    logprobs = inference.get_logprobs(prompts, responses)
    rewards = torch.tensor([1.0, 0.0])
    advantages = (rewards - rewards.mean())[:, None]  # [B, 1] against [B, T]
    policy_loss = -(logprobs * advantages).mean()
    policy_loss.backward()
    grads = [p.grad for p in inference.backend.model.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    inference.backend.model.zero_grad()


def test_batch_generate_with_tools_snippet(hf: InferenceModule) -> None:
    inference = hf
    tools = [{"name": "search", "description": "Search the web", "parameters": {"query": "string"}}]
    result, tool_calls = inference.batch_generate_with_tools(
        "Find the latest AI news", available_tools=tools
    )
    for tc in tool_calls[0]:
        print(f"Tool: {tc.name}, Args: {tc.arguments}")
    assert len(tool_calls) == len(result.texts) == 1
    assert all(isinstance(tc, ToolCall) and tc.name == "search" for tc in tool_calls[0])


@pytest.mark.parametrize("fixture", ["native", "hf"])
def test_tools_offered_to_the_bundled_model_are_called(fixture: str, request) -> None:
    inference: InferenceModule = request.getfixturevalue(fixture)
    result, tool_calls = inference.batch_generate_with_tools(
        QUESTION, available_tools=[CALCULATOR], max_new_tokens=40, do_sample=False
    )
    assert [(tc.name, tc.arguments) for tc in tool_calls[0]] == [
        ("calculator", {"expression": "347 * 29"})
    ]
    call = tool_calls[0][0]
    assert result.texts[0][call.start_pos : call.end_pos] == call.raw_text


def test_tool_environment_snippet(native: InferenceModule) -> None:
    class ToolEnvironment:
        def __init__(self, inference: InferenceModule):
            self.inference = inference
            self.tools = self.define_tools()

        def define_tools(self):
            return [
                {
                    "name": "verify",
                    "description": "Verify mathematical calculation",
                    "parameters": {"expression": "string"},
                },
                {
                    "name": "search",
                    "description": "Search for information",
                    "parameters": {"query": "string"},
                },
            ]

        def step(self, state):
            result, tool_calls = self.inference.batch_generate_with_tools(
                state.prompt, available_tools=self.tools
            )
            for tc in tool_calls[0]:
                if tc.name in ("verify", "search"):
                    state.add_observation(tc.arguments)
            state.response = result.texts[0]
            return state

    class State:  # the seed leaves the state to the user
        prompt = QUESTION
        response: str | None = None
        observations: list[Any] = []

        def add_observation(self, observation: Any) -> None:
            self.observations.append(observation)

    state = ToolEnvironment(native).step(State())
    assert isinstance(state.response, str) and state.response
    assert all(isinstance(o, dict) for o in state.observations)


def test_caching_strategies_snippet() -> None:
    inference = InferenceModule(MODEL, backend="native", cache_size=0)  # no caching
    assert inference.generate("1+1=", **GREEDY).metadata["cache_hits"] == 0
    assert inference.generate("1+1=", **GREEDY).metadata["cache_hits"] == 0
    inference.close()
    inference = InferenceModule(MODEL, backend="native", cache_size=10000)
    prompts = ["1+1=", "2+2="]
    first = inference.generate(prompts, use_cache=True, **GREEDY)
    again = inference.generate(prompts, use_cache=True, **GREEDY)
    bypass = inference.generate(prompts, use_cache=False, **GREEDY)
    inference.clear_cache()
    cleared = inference.generate(prompts, use_cache=True, **GREEDY)
    assert again.metadata["cache_hits"] == 2 and bypass.metadata["cache_hits"] == 0
    assert cleared.metadata["cache_misses"] == 2
    assert first.texts == again.texts == bypass.texts == cleared.texts
    inference.close()


def test_vllm_snippet_names_the_server_settings() -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size is a launch setting") as err:
        InferenceModule(
            MODEL,
            backend="vllm",
            tensor_parallel_size=4,
            dtype="bfloat16",
            gpu_memory_utilization=0.95,
        )
    assert "--tensor-parallel-size" in str(err.value)
    with pytest.raises(ValueError, match="base_url") as err:
        InferenceModule(MODEL, backend="vllm")
    assert "cannot run in this process" in str(err.value)


def test_vllm_backend_over_an_openai_compatible_server(server: RunningServer) -> None:
    # The snippet with its launch settings moved to the server (here rlserve's, which
    # speaks vLLM's dialect) and the server's URL given.
    inference = InferenceModule(MODEL, backend="vllm", base_url=server.url)
    prompts = ["prompt"] * 4  # the seed uses 100
    result = inference.generate(prompts, max_new_tokens=8, temperature=0.8)
    assert inference.backend.name == "remote" and len(result.texts) == 4
    assert all(1 <= len(ids) <= 8 for ids in result.token_ids)
    inference.close()


def test_troubleshooting_snippets() -> None:
    inference = InferenceModule(MODEL, backend="huggingface", gradient_checkpointing=True)
    assert inference.backend.model.is_gradient_checkpointing
    text = '<function_calls><invoke name="calculator"><parameter name="expression">2+2'
    text += "</parameter></invoke></function_calls>"
    assert inference.parse_tool_calls(text) == []  # json, the default, finds none
    inference.tool_parser_type = "xml"
    tool_calls = inference.parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in tool_calls] == [("calculator", {"expression": "2+2"})]
    inference.close()


def test_best_practices_snippets() -> None:
    inference = create_inference_module(MODEL, backend="auto")
    reference = InferenceModule(MODEL, backend="huggingface")
    reference.backend.model.requires_grad_(False)
    assert not any(p.requires_grad for p in reference.backend.model.parameters())
    with torch.enable_grad():
        assert not reference.get_logprobs("1+1=", "2").requires_grad
    caught = None
    try:
        inference.generate(["ok", 5])
    except Exception as e:
        caught = e
    assert isinstance(caught, ValueError) and "prompts" in str(caught)
    inference.close()
    reference.close()


SEED_FORMATS = {
    "json": '{\n    "tool": "search",\n    "arguments": {\n        "query": "Python tutorials",'
    '\n        "max_results": 5\n    }\n}',
    "xml": "<function_calls>\n<invoke>\n<tool_name>search</tool_name>\n<parameters>\n"
    "<query>Python tutorials</query>\n<max_results>5</max_results>\n</parameters>\n"
    "</invoke>\n</function_calls>",
    "function": 'search(query="Python tutorials", max_results=5)',
}


@pytest.mark.parametrize("fmt", sorted(SEED_FORMATS))
def test_tool_call_formats(native: InferenceModule, fmt: str) -> None:
    native.tool_parser_type = fmt
    try:
        calls = native.parse_tool_calls(SEED_FORMATS[fmt])
    finally:
        native.tool_parser_type = "json"
    assert [(c.name, c.arguments) for c in calls] == [
        ("search", {"query": "Python tutorials", "max_results": 5})
    ]
    assert SEED_FORMATS[fmt][calls[0].start_pos : calls[0].end_pos] == calls[0].raw_text


# --- the generation cache -----------------------------------------------------------------


@pytest.fixture
def cached() -> Iterator[InferenceModule]:
    with InferenceModule(backend="native", cache_size=2) as module:
        yield module


def test_a_hit_returns_the_same_result_without_generating(cached: InferenceModule) -> None:
    counts = counting(cached)
    first = cached.generate(["1+2=", "3+4="], return_logprobs=True, **GREEDY)
    first.token_ids[0].append(999)  # the caller's copy; the cache keeps its own
    again = cached.generate(["1+2=", "3+4="], return_logprobs=True, **GREEDY)
    assert counts == [2]  # the second call generated nothing
    assert again.metadata["cache_hits"] == 2 and again.metadata["cache_misses"] == 0
    assert again.token_ids[0] == first.token_ids[0][:-1] and again.texts == first.texts
    assert torch.equal(again.logprobs[1], first.logprobs[1])
    assert cached.cache_stats == {"hits": 2, "misses": 2, "size": 2, "capacity": 2}


def test_only_the_missing_prompts_are_generated_and_lru_evicts(cached: InferenceModule) -> None:
    counts = counting(cached)
    cached.generate(["1+2=", "3+4="], **GREEDY)
    mixed = cached.generate(["3+4=", "5+6="], **GREEDY)  # evicts "1+2=", the oldest
    assert counts == [2, 1] and mixed.metadata["cache_hits"] == 1
    cached.generate(["1+2="], **GREEDY)
    assert counts == [2, 1, 1]


def test_seeded_sampling_is_cached_unseeded_never(cached: InferenceModule) -> None:
    counts = counting(cached)
    sampled = {"max_new_tokens": 8, "temperature": 1.0, "num_return_sequences": 2}
    seeded = [cached.generate("1+2=", seed=7, **sampled) for _ in range(2)]
    assert counts == [2] and seeded[0].texts == seeded[1].texts
    for _ in range(2):
        assert cached.generate("1+2=", **sampled).metadata["cache_hits"] == 0
    assert counts == [2, 2, 2]


def test_no_hit_across_a_weight_update(cached: InferenceModule) -> None:
    counts = counting(cached)
    before = cached.generate("1+2=", **GREEDY)
    version = cached.backend.update_weights(MODEL)  # the same weights, as a new version
    after = cached.generate("1+2=", **GREEDY)
    assert counts == [1, 1] and after.metadata["cache_hits"] == 0
    assert after.metadata["policy_version"] == version != before.metadata["policy_version"]
    assert after.texts == before.texts  # the same weights, generated again
    assert cached.generate("1+2=", **GREEDY).metadata["cache_hits"] == 1


def test_a_trainable_model_is_never_cached() -> None:
    # optimizer.step() changes a trainable model in place, with no new weight version
    with InferenceModule(backend="huggingface") as module:
        counts = counting(module)
        module.generate("1+2=", **GREEDY)
        module.generate("1+2=", **GREEDY)
        assert counts == [1, 1]
        module.backend.model.requires_grad_(False)  # frozen: a reference model
        module.generate("1+2=", **GREEDY)
        assert module.generate("1+2=", **GREEDY).metadata["cache_hits"] == 1
        assert counts == [1, 1, 1]


# --- teacher forcing ------------------------------------------------------------------------


def test_logprobs_match_generation_and_are_padded_with_a_mask(native: InferenceModule) -> None:
    prompts = ["What is 2+2?", QUESTION]
    result = native.generate(prompts, return_logprobs=True, **GREEDY)
    lengths = [len(ids) for ids in result.token_ids]
    logprobs, mask = native.get_logprobs(prompts, result.token_ids, return_mask=True)
    assert logprobs.shape == mask.shape == (2, max(lengths))
    for i, n in enumerate(lengths):
        assert torch.allclose(logprobs[i, :n], result.logprobs[i], atol=1e-5)
        assert mask[i].tolist() == [True] * n + [False] * (max(lengths) - n)
        assert bool((logprobs[i, n:] == 0).all())
    logits, logits_mask = native.get_logits(prompts, result.token_ids, return_mask=True)
    assert torch.equal(logits_mask, mask) and bool((logits[~mask] == 0).all())
    picked = torch.log_softmax(logits, -1).gather(-1, _ids(result.token_ids, mask)[..., None])
    assert torch.allclose(picked.squeeze(-1)[mask], logprobs[mask], atol=1e-5)


def _ids(token_ids: list[list[int]], mask: torch.Tensor) -> torch.Tensor:
    ids = torch.zeros(mask.shape, dtype=torch.long)
    for i, row in enumerate(token_ids):
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def test_hf_and_native_agree_and_hf_is_differentiable(
    native: InferenceModule, hf: InferenceModule
) -> None:
    prompts, responses = ["1+2=", "What is 9+9?"], ["3", ""]  # an empty response: all padding
    theirs = native.get_logprobs(prompts, responses, temperature=0.7)
    ours = hf.get_logprobs(prompts, responses, temperature=0.7)
    assert ours.shape == theirs.shape == (2, 1) and ours.requires_grad
    assert not theirs.requires_grad  # the native engine serves, it does not train
    assert torch.allclose(ours.detach(), theirs, atol=1e-4)
    with torch.no_grad():
        assert not hf.get_logprobs(prompts, responses).requires_grad
    text, ids = (
        hf.get_logits("1+2=", "3 + 4"),
        hf.get_logits("1+2=", hf.backend.tokenizer.encode("3 + 4")),
    )
    assert torch.equal(text, ids) and text.requires_grad


def test_generation_logits(native: InferenceModule) -> None:
    result = native.generate(["1+2=", "3+4="], return_logits=True, **GREEDY)
    for ids, logits in zip(result.token_ids, result.logits, strict=True):
        assert logits.shape == (len(ids), len(native.backend.tokenizer))
        assert logits.argmax(-1).tolist() == ids  # greedy: each token is its row's argmax


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backend": "vllm_in_process"}, "backend"),
        ({"backend": "native", "tensor_parallel": 2}, "tensor_parallel"),
        ({"backend": "native", "cache_size": -1}, "cache_size"),
        ({"backend": "native", "tool_parser": "yaml"}, "tool-call parser"),
        ({"backend": "native", "device": "tpu"}, "device"),
        ({"backend": "native", "dtype": "int4"}, "dtype"),
        ({"model_name": "gpt2", "backend": "huggingface"}, "gpt2"),
        ({"backend": "huggingface", "trust_remote_code": "yes"}, "trust_remote_code"),
        ({"backend": "native", "gradient_checkpointing": True}, "gradient_checkpointing"),
        ({"backend": "native", "model": MODEL}, "model_name"),
        ({"backend": "remote"}, "base_url"),
    ],
)
def test_bad_construction_is_refused_by_name(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        InferenceModule(**kwargs)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.generate(5), "prompts"),
        (lambda m: m.generate([]), "prompts"),
        (lambda m: m.generate(["ok", ""]), "prompts"),
        (lambda m: m.generate("x", max_new_tokens=0), "max_new_tokens"),
        (lambda m: m.generate("x", num_return_sequences=0), "num_return_sequences"),
        (lambda m: m.generate("x", do_sample="yes"), "do_sample"),
        (lambda m: m.generate("x", use_cache=1), "use_cache"),
        (lambda m: m.generate("x", top_p=2.0), "top_p"),
        (lambda m: m.generate("x", pad_token_id=0), "pad_token_id"),
        (lambda m: m.generate("x" * 5000, max_new_tokens=4), r"prompts\[0\]"),
        (lambda m: m.get_logprobs(["a", "b"], ["c"]), "responses"),
        (lambda m: m.get_logprobs("a", [1.5]), r"responses\[0\]"),
        (lambda m: m.get_logprobs("a", "b", temperature=0), "temperature"),
        (lambda m: m.get_logits("a", "b", return_mask="yes"), "return_mask"),
        (lambda m: m.batch_generate_with_tools("a", available_tools=[]), "available_tools"),
        (lambda m: m.batch_generate_with_tools("a", available_tools=[{"x": 1}]), "tools"),
        (lambda m: m.parse_tool_calls(None), "text"),
        (lambda m: setattr(m, "tool_parser_type", "yaml"), "tool-call parser"),
    ],
)
def test_bad_calls_are_refused_by_name_and_lose_nothing(
    native: InferenceModule, call: Any, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        call(native)
    assert native.tool_parser_type == "json"
    assert len(native.generate(["1+2=", "3+4="], **GREEDY).texts) == 2  # still serving
