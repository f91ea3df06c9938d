"""Seed 003's `InferenceEngine`: every snippet of the seed document, run with only the
import changed (the bundled model in place of "Qwen/Qwen3-0.6B"; configs written to
tmp_path), then what the metadata promises: response ids and masks, multi-turn tool calls
executed for real (the built-in calculator, a VERL-style BaseTool class), and the limits.

Nothing is mocked: the native engine, the Hugging Face backend and a real rlserve server on
loopback (standing in for the seed's SGLang / vLLM) run the bundled model. Two stand-ins:
the GSM8K snippet's `load_dataset` (no network here) is a local list of two questions, and
the interactive-chat snippet's `input()` reads scripted lines. A pass-through recorder
around `backend.generate` checks the mask against what the model really sampled.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlserve import GenerationOutput, InferenceEngine
from rlserve.backends import Sample
from rlserve.config import BUNDLED_MODEL
from tests.support.calculator import CALCULATOR
from tests.support.servers import RunningServer

MODEL = str(BUNDLED_MODEL)  # in place of the seed's "Qwen/Qwen3-0.6B"
# The seed's minimal config.yaml; rollout.name native (sglang needs a server: see below).
MINIMAL_CONFIG = f"""\
model_path: "{MODEL}"
trust_remote_code: false

rollout:
  name: native
  mode: async
  prompt_length: 2048
  response_length: 512
  tensor_model_parallel_size: 1
  gpu_memory_utilization: 0.5
  dtype: auto
"""
# The seed's tools.yaml, verbatim.
TOOLS_YAML = """\
tools:
  - name: calculator
    description: Perform arithmetic calculations
    parameters:
      type: object
      properties:
        expression:
          type: string
          description: Math expression to evaluate
      required: [expression]
"""
QUESTION = [{"role": "user", "content": "What is 347 * 29?"}]  # the model calls the tool
FAST_LENGTH = 50  # the least the seed's snippets use (max_tokens=50)
SMALL_KV = {"native": {"num_blocks": 128, "block_size": 16}}  # cheap engines for the rest


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory) -> Path:
    """The seed's minimal config.yaml, as written."""
    folder = tmp_path_factory.mktemp("seed003")
    (folder / "config.yaml").write_text(MINIMAL_CONFIG)
    return folder


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory) -> Path:
    """The minimal config with a shorter response_length and a small KV cache, so that
    sampling outside the tiny model's arithmetic stops soon."""
    folder = tmp_path_factory.mktemp("seed003fast")
    config = MINIMAL_CONFIG.replace("response_length: 512", f"response_length: {FAST_LENGTH}")
    config += "  engine_kwargs: {native: {num_blocks: 128, block_size: 16}}\n"
    (folder / "config.yaml").write_text(config)
    return folder


@pytest.fixture(scope="module")
def server(make_engine) -> Iterator[RunningServer]:
    """A real rlserve server on loopback, allowing the seed's response_length of 512."""
    from rlserve.server import ServerConfig

    running = RunningServer(
        make_engine(num_blocks=128, block_size=16), ServerConfig(max_tokens=512)
    )
    yield running
    running.close()


@pytest.fixture(scope="module")
def engine(fast_dir: Path) -> Iterator[InferenceEngine]:
    with InferenceEngine(str(fast_dir / "config.yaml")) as shared:
        yield shared


def tool_config(folder: Path, **multi_turn: Any) -> dict[str, Any]:
    (folder / "tools.yaml").write_text(TOOLS_YAML)
    options = {"enable": True, "max_assistant_turns": 5, "tool_config_path": "tools.yaml"}
    options["format"] = "hermes"
    return {
        "model_path": MODEL,
        "rollout": {
            "name": "native",
            "prompt_length": 512,
            "response_length": 128,
            "engine_kwargs": SMALL_KV,
            "multi_turn": {**options, **multi_turn},
        },
    }


def write_yaml(folder: Path, config: dict[str, Any]) -> str:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


class Recorder:
    """Passes every request to the real backend and keeps each Sample it reports."""

    def __init__(self, backend: Any) -> None:
        self.generate = backend.generate
        self.samples: list[Sample] = []
        self.calls = 0

    def __call__(self, requests, on_done) -> None:
        self.calls += 1

        def keep(k: int, sample: Sample) -> None:
            self.samples.append(sample)
            on_done(k, sample)

        self.generate(requests, keep)


# --- the seed's snippets, in its order -------------------------------------------------


def test_seed_quick_start(seed_dir, monkeypatch, capsys):
    monkeypatch.chdir(seed_dir)
    engine = InferenceEngine("config.yaml")
    output = engine.generate("What is 2 + 2?")
    print(output.completions[0])
    engine.shutdown()
    assert capsys.readouterr().out == output.completions[0] + "\n"
    assert isinstance(output, GenerationOutput) and len(output.token_ids[0]) > 0


def test_seed_single_prompt(engine, capsys):
    output = engine.generate("Explain quantum computing in one sentence.")
    print(output.completions[0])
    print(f"Generated {len(output.token_ids[0])} tokens")
    assert f"Generated {len(output.token_ids[0])} tokens" in capsys.readouterr().out
    assert 0 < len(output.token_ids[0]) <= 512


def test_seed_batch_prompts(engine, capsys):
    prompts = [
        "What is the capital of France?",
        "What is 10 * 5?",
        "Name a primary color.",
    ]
    output = engine.generate(prompts)
    for prompt, completion in zip(prompts, output.completions):  # noqa: B905 (the seed's code)
        print(f"Q: {prompt}")
        print(f"A: {completion}\n")
    assert capsys.readouterr().out.count("Q: ") == 3
    assert len(output.completions) == len(output.token_ids) == len(output.metadata) == 3


def test_seed_multi_turn_messages(engine):
    messages = [
        {"role": "system", "content": "You are a helpful math tutor."},
        {"role": "user", "content": "What is 5 + 3?"},
        {"role": "assistant", "content": "5 + 3 equals 8."},
        {"role": "user", "content": "Now multiply that by 2."},
    ]
    output = engine.generate([messages])
    print(output.completions[0])
    rendered = engine.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert engine.tokenizer.decode(output.metadata[0]["prompt_ids"]) == rendered


def test_seed_batch_of_conversations(engine, capsys):
    conversations = [
        [
            {"role": "user", "content": "Hello!"},
        ],
        [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "How are you?"},
        ],
    ]
    output = engine.generate(conversations)
    for i, completion in enumerate(output.completions):
        print(f"Conversation {i + 1}: {completion}")
    assert "Conversation 2: " in capsys.readouterr().out


def test_seed_greedy_decoding(engine):
    output = engine.generate(
        "What is the meaning of life?",
        temperature=0.0,
        do_sample=False,
    )
    again = engine.generate("What is the meaning of life?", temperature=0.0, do_sample=False)
    assert output.token_ids == again.token_ids
    assert engine.generate("What is 12 + 30?", do_sample=False).completions == ["12 + 30 = 42"]


def test_seed_creative_sampling(engine):
    output = engine.generate(
        "Write a haiku about programming:",
        temperature=0.9,
        top_p=0.95,
        top_k=50,
    )
    assert len(output.completions) == 1 and output.metadata[0]["finish_reason"] in (
        "stop",
        "length",
    )


def test_seed_limit_output_length(engine):
    output = engine.generate(
        "Count from 1 to 100:",
        max_tokens=50,
    )
    assert len(output.token_ids[0]) <= 50


def test_seed_all_sampling_parameters(seed_dir):
    engine = InferenceEngine(str(seed_dir / "config.yaml"))  # response_length 512
    prompt = "What is 7 + 8?"
    output = engine.generate(
        prompt,
        temperature=1.0,  # Sampling temperature (0 = greedy)
        top_p=1.0,  # Nucleus sampling threshold
        top_k=-1,  # Top-k sampling (-1 = disabled)
        max_tokens=512,  # Max new tokens to generate
        do_sample=True,  # Enable/disable sampling
    )
    engine.shutdown()
    assert len(output.token_ids[0]) <= 512


def test_seed_output_structure(engine):
    output = engine.generate("Hello")
    assert isinstance(output.completions[0], str)
    assert all(isinstance(t, int) for t in output.token_ids[0])
    meta = output.metadata[0]
    ids, mask = meta["response_ids"], meta["response_mask"]
    n = len(output.token_ids[0])
    length = FAST_LENGTH  # padded to rollout.response_length, as VERL's responses tensor
    assert len(ids) == len(mask) == length
    assert ids[:n] == output.token_ids[0] and mask == [1] * n + [0] * (length - n)
    assert ids[n:] == [engine.tokenizer.pad_token_id] * (length - n)
    assert output.completions[0] == engine.tokenizer.decode(ids[:n], skip_special_tokens=True)


def test_seed_tool_calling_snippet(tmp_path):
    """The seed's multi_turn block and tools.yaml, and its "Using with Tools" code."""
    (tmp_path / "tools.yaml").write_text(TOOLS_YAML)
    config = MINIMAL_CONFIG + textwrap.indent(
        textwrap.dedent("""\
            multi_turn:
              enable: true
              max_assistant_turns: 5
              tool_config_path: "tools.yaml"  # Define your tools here
              format: hermes  # or llama3_json
            """),
        "  ",
    )
    (tmp_path / "config.yaml").write_text(config)
    with InferenceEngine(str(tmp_path / "config.yaml")) as engine:
        messages = [
            {"role": "user", "content": "What is 25 * 4?"},
        ]
        output = engine.generate([messages])
    assert engine.tools.schemas[0]["function"]["name"] == "calculator"
    assert output.metadata[0]["messages"][0] == messages[0]


def test_seed_minimal_config_sglang_over_a_server(tmp_path, server):
    """`rollout.name: sglang` is served over HTTP: a real rlserve server stands in."""
    config = MINIMAL_CONFIG.replace("name: native", f"name: sglang\n  base_url: {server.url}")
    (tmp_path / "config.yaml").write_text(config)
    with InferenceEngine(str(tmp_path / "config.yaml")) as remote:
        assert remote.backend.name == "remote"
        output = remote.generate("What is 12 + 30?", temperature=0, do_sample=False)
    assert output.completions == ["12 + 30 = 42"]


def test_seed_cleanup(fast_dir, monkeypatch):
    monkeypatch.chdir(fast_dir)
    engine = InferenceEngine("config.yaml")
    try:
        output = engine.generate("Hello")
    finally:
        engine.shutdown()
    assert output.completions
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate("Hello")
    engine.shutdown()  # idempotent


def test_seed_gsm8k_evaluation(seed_dir, monkeypatch, capsys):
    monkeypatch.chdir(seed_dir)

    def load_dataset(*_: Any, **__: Any) -> list[dict[str, str]]:  # stand-in: no network
        return [{"question": "What is 31 + 45?"}, {"question": "What is 12 + 30?"}]

    engine = InferenceEngine("config.yaml")
    dataset = load_dataset("gsm8k", "main", split="test")

    prompts = [f"Solve: {item['question']}" for item in dataset[:10]]
    outputs = engine.generate(prompts, temperature=0, do_sample=False)

    for prompt, completion in zip(prompts, outputs.completions):  # noqa: B905 (the seed's code)
        print(f"{prompt[:50]}... -> {completion[:100]}")

    engine.shutdown()
    assert capsys.readouterr().out.count("... -> ") == 2


def test_seed_interactive_chat(engine, monkeypatch, capsys):
    lines = iter(["What is 12 + 30?", "What is 31 + 45?", ""])
    monkeypatch.setattr("builtins.input", lambda _prompt="": next(lines))
    history = []

    while True:
        user_input = input("You: ")
        if not user_input:
            break

        history.append({"role": "user", "content": user_input})
        output = engine.generate([history])
        assistant_response = output.completions[0]
        history.append({"role": "assistant", "content": assistant_response})
        print(f"AI: {assistant_response}")

    assert [m["role"] for m in history] == ["user", "assistant"] * 2
    assert capsys.readouterr().out.count("AI: ") == 2


# --- what the metadata promises -------------------------------------------------------


@pytest.fixture(scope="module")
def tooled(tmp_path_factory) -> Iterator[InferenceEngine]:
    folder = tmp_path_factory.mktemp("tooled")
    with InferenceEngine(write_yaml(folder, tool_config(folder))) as shared:
        yield shared


def test_calculator_is_executed_and_only_sampled_tokens_are_masked(tooled, monkeypatch):
    recorder = Recorder(tooled.backend)
    monkeypatch.setattr(tooled.backend, "generate", recorder)
    output = tooled.generate([QUESTION], do_sample=False)
    meta, ids = output.metadata[0], output.token_ids[0]
    assert meta["num_turns"] == 2 and meta["finish_reason"] == "stop"
    assert meta["messages"][2] == {
        "role": "tool",
        "tool_call_id": meta["messages"][1]["tool_calls"][0]["id"],
        "name": "calculator",
        "content": "10063",  # 347 * 29, computed by the built-in calculator
    }
    assert "10063" in output.completions[0].split("</tool_call>")[-1]
    mask = meta["response_mask"]
    assert len(meta["response_ids"]) == len(mask) == 128
    assert meta["response_ids"][: len(ids)] == ids
    sampled = [t for s in recorder.samples for t in s.token_ids]
    assert [t for t, m in zip(ids, mask, strict=False) if m == 1] == sampled
    for seg in meta["segments"]:  # 0 exactly on tool output and template tokens
        assert mask[seg["start"] : seg["end"]] == [int(seg["kind"] == "model")] * (
            seg["end"] - seg["start"]
        )
    tool_tokens = [
        ids[i] for s in meta["segments"] if s["kind"] == "tool" for i in range(s["start"], s["end"])
    ]
    assert tooled.tokenizer.decode(tool_tokens).strip() == "10063"
    assert mask[len(ids) :] == [0] * (128 - len(ids))
    logprobs = meta["logprobs"]
    assert [lp for lp, m in zip(logprobs, mask, strict=False) if m] == [
        lp for s in recorder.samples for lp in s.logprobs
    ]
    assert all(lp == 0.0 for lp, m in zip(logprobs, mask, strict=False) if not m)


def test_max_assistant_turns_is_honoured(tmp_path):
    config = tool_config(tmp_path, max_assistant_turns=1)
    with InferenceEngine(write_yaml(tmp_path, config)) as engine:
        output = engine.generate([QUESTION], do_sample=False)
    meta = output.metadata[0]
    assert meta["num_turns"] == 1 and meta["finish_reason"] == "max_turns"
    assert [m["role"] for m in meta["messages"]] == ["user", "assistant"]  # tool not run
    assert meta["response_mask"][: len(output.token_ids[0])] == [1] * len(output.token_ids[0])


class VerlCalculator:
    """A tool in VERL's BaseTool shape (async create / execute / release)."""

    released: list[str] = []

    def __init__(self, config: dict, tool_schema: Any) -> None:
        self.config, self.name = config, tool_schema.function.name

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> str:
        return instance_id or "instance-1"

    async def execute(self, instance_id: str, parameters: dict, **kwargs: Any) -> tuple:
        value = eval(parameters["expression"], {"__builtins__": {}})  # test input only
        return {"text": f"{self.config['prefix']}{value}"}, 0.0, {}

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        VerlCalculator.released.append(instance_id)


def test_verl_tool_class_from_a_class_path(tmp_path):
    verl_tools = {
        "tools": [
            {
                "class_name": f"{__name__}.VerlCalculator",
                "config": {"type": "native", "prefix": "= "},
                "tool_schema": CALCULATOR,
            }
        ]
    }
    (tmp_path / "verl_tools.yaml").write_text(yaml.safe_dump(verl_tools))
    config = tool_config(tmp_path, tool_config_path=str(tmp_path / "verl_tools.yaml"))
    with InferenceEngine(config) as engine:
        output = engine.generate([QUESTION], do_sample=False)
    assert output.metadata[0]["messages"][2]["content"] == "= 10063"
    assert VerlCalculator.released == ["instance-1"]


def test_greedy_agrees_across_native_huggingface_and_vllm_names(tooled, tmp_path, server):
    expected = tooled.generate([QUESTION], do_sample=False)
    for name, extra in (("hf", {}), ("vllm", {"base_url": server.url})):
        config = tool_config(tmp_path)
        config["rollout"].update(name=name, **extra)
        config["rollout"].pop("engine_kwargs")
        with InferenceEngine(write_yaml(tmp_path, config)) as other:
            got = other.generate([QUESTION], do_sample=False)
        assert got.token_ids == expected.token_ids, name
        assert got.metadata[0]["response_mask"] == expected.metadata[0]["response_mask"], name


def test_n_samples_per_prompt_are_reproducible_with_a_seed(monkeypatch):
    config = {
        "model_path": MODEL,
        "rollout": {"n": 3, "response_length": 24, "batch_size": 1, "engine_kwargs": SMALL_KV},
    }
    with InferenceEngine(config) as engine:
        recorder = Recorder(engine.backend)
        monkeypatch.setattr(engine.backend, "generate", recorder)
        # temperature 5: the tiny model is too sure of itself at 1 for samples to differ
        first = engine.generate(["What is 31 + 45?", "Hello"], temperature=5.0, seed=7)
        again = engine.generate(["What is 31 + 45?", "Hello"], temperature=5.0, seed=7)
        greedy = engine.generate(["Hello"], do_sample=False)
        assert engine.backend.engine.block_manager.num_used_blocks == 0
    assert len(first) == 6 and first.token_ids == again.token_ids
    assert len(recorder.samples) == 6 + 6 + 1
    assert recorder.calls == 2 + 2 + 1  # batch_size 1: one prompt (its n samples) a call
    assert len({tuple(t) for t in first.token_ids[3:]}) > 1  # the 3 samples of "Hello" differ
    assert len(greedy) == 1  # greedy: one completion per prompt, as in VERL


def test_too_long_prompt_and_max_tokens_are_errors_naming_the_key(engine):
    with pytest.raises(ValueError, match=r"prompts\[1\] is \d+ tokens.*rollout.prompt_length"):
        engine.generate(["Hi", "7 + " * 1100])
    with pytest.raises(ValueError, match=f"max_tokens must be <= {FAST_LENGTH}"):
        engine.generate("Hi", max_tokens=FAST_LENGTH + 1)
    assert engine.generate("What is 12 + 30?", do_sample=False).completions == ["12 + 30 = 42"]


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([], "non-empty list"),
        ("", r"prompts\[0\]"),
        ([{"role": "user", "content": "Hi"}], r"wrapped in a list: generate\(\[messages\]\)"),
        ([["not a message"]], r"prompts\[0\] must be"),
        ([[{"content": "no role"}]], r"prompts\[0\] must be"),
        (42, "prompts must be"),
    ],
)
def test_bad_prompts_name_prompts(engine, prompts, message):
    with pytest.raises(ValueError, match=message):
        engine.generate(prompts)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"do_sample": "yes"}, "do_sample"),
    ],
)
def test_bad_sampling_arguments_name_the_argument(engine, kwargs, field):
    with pytest.raises(ValueError, match=field):
        engine.generate("Hi", **kwargs)
