"""Seed 004's "LLM generate" snippet, run as written with only its imports changed
(nemo_skills.* -> rlserve.eval.seed004), against a real rlserve server on loopback where
the seed had a TensorRT-LLM server: its default address (127.0.0.1:5000) is pointed at the
test server. The bundled model writes calculator JSON, so the code it runs is a dict."""

from __future__ import annotations

import pytest

from rlserve import Engine, SamplingParams
from rlserve.eval import seed004
from rlserve.eval.seed004 import (
    CodeExecutionModel,
    get_code_execution_model,
    get_prompt,
    get_sandbox,
)
from rlserve.server import ServerConfig
from tests.support.rollouts import ScriptedPolicy
from tests.support.servers import RunningServer


@pytest.fixture(scope="module")
def server():
    running = RunningServer(Engine(num_blocks=256, block_size=8), ServerConfig())
    yield running
    running.close()


@pytest.fixture
def at_default_address(server, monkeypatch):
    host, port = server.url.removeprefix("http://").split(":")
    monkeypatch.setattr(seed004, "DEFAULT_HOST", host)
    monkeypatch.setattr(seed004, "DEFAULT_PORT", port.split("/")[0])


def test_the_seed_snippet_runs_as_written(at_default_address, bundled, capsys):
    import copy

    sandbox = get_sandbox()  # localhost by default
    llm = get_code_execution_model(server_type="trtllm", sandbox=sandbox)

    prompt_template = get_prompt("generic/math", "qwen-instruct")
    prompt_template.config.template.code_begin = "<tool_call>\n"
    prompt_template.config.template.code_end = "</tool_call>\n"
    print(f"Prompt template : {prompt_template}")

    print(repr(prompt_template.fill({"problem": "What is 1+1?"})))

    sampling_params = {
        "tokens_to_generate": 8000,
        "temperature": 0.0,
        "top_k": 20,
        "top_p": 0.8,
        "repetition_penalty": 1.0,
    }

    request = copy.deepcopy(sampling_params)
    list_of_texts = [prompt_template.fill({"problem": "What is 1+1?"})] * 4
    request["prompts"] = list_of_texts

    output = llm.generate(**request, **prompt_template.get_code_execution_args())

    first = output[0]["generation"]

    prompt = prompt_template.fill(
        {"problem": "What is the sum of all prime numbers less than 10 million?"}
    )
    request["prompts"] = [prompt] * 4

    output = llm.generate(**request, **prompt_template.get_code_execution_args())

    second = output[0]["generation"]
    llm.backend.close()
    sandbox.close()

    # What the snippet printed and returned.
    shown = capsys.readouterr().out
    assert "Prompt template : " in shown and "<|im_start|>assistant\\n" in shown
    assert len(output) == 4 and all(set(o) >= {"generation"} for o in output)
    # What the bundled model says to that prompt, greedy (it stops before any code).
    (expected,) = bundled.generate(list_of_texts[0], SamplingParams(temperature=0, max_tokens=64))
    assert first == bundled.tokenizer.decode(
        expected.outputs[0].token_ids, skip_special_tokens=True
    )
    # Greedy: the four copies of one prompt generate the same text.
    assert [o["generation"] for o in output] == [second] * 4
    assert list_of_texts[0].startswith("<|im_start|>system\n")
    assert list_of_texts[0].endswith("What is 1+1?<|im_end|>\n<|im_start|>assistant\n")


def test_generate_runs_the_code_between_the_tags(bundled):
    """A scripted policy writes code; the sandbox output is appended as the seed shows.
    (The scripted policy stops at stop token ids only, so the tags are the single tokens.)"""

    def reply(prompt: str) -> str:
        if "```output" in prompt:
            return "The code confirms it: 70."
        return "Let's check.\n<tool_call>\nprint(21 + 49)\n</tool_call>"

    with get_sandbox() as sandbox:
        llm = get_code_execution_model(
            backend=ScriptedPolicy(bundled.tokenizer, reply), sandbox=sandbox
        )
        prompt = get_prompt("generic/math", "qwen-instruct")
        prompt.config.template.code_begin = "<tool_call>"
        prompt.config.template.code_end = "</tool_call>"
        text = prompt.fill({"problem": "Sum the bases."})
        (out,) = llm.generate(
            prompts=[text], tokens_to_generate=64, **prompt.get_code_execution_args()
        )
    assert out["generation"] == (
        "Let's check.\n<tool_call>\nprint(21 + 49)\n</tool_call>"
        "\n```output\n70\n```\nThe code confirms it: 70."
    )
    assert out["num_generated_tokens"] > 0


def test_bad_arguments_are_refused(bundled):
    with pytest.raises(ValueError, match="server_type"):
        get_code_execution_model(server_type="tensorflow")
    with pytest.raises(ValueError, match="max_code_executions"):
        get_code_execution_model(backend=bundled, code_execution={"max_code_executions": 0})
    with pytest.raises(ValueError, match="code_execution"):
        get_code_execution_model(backend=bundled, code_execution={"nope": 1})
    with pytest.raises(ValueError, match="template_name"):
        get_prompt("generic/math", "no-such-chat")
    with pytest.raises(ValueError, match="sandbox_type"):
        get_sandbox("docker")
    with get_sandbox() as box:
        llm = CodeExecutionModel(bundled, box)
        with pytest.raises(ValueError, match="prompts"):
            llm.generate(prompts="What?", code_begin="<a>", code_end="</a>")
        with pytest.raises(ValueError, match="code_output_begin"):
            llm.generate(["x"], "<a>", "</a>", code_output_begin="<output>")
        with pytest.raises(ValueError, match="temperature"):
            llm.generate(["x"], "<a>", "</a>", temperature=-1)
