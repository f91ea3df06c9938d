"""The bundled model: loads by default, chats, does arithmetic, calls its calculator tool."""

import json
import random
import re
import subprocess
import sys

from rlserve import SamplingParams
from rlserve.config import BUNDLED_MODEL
from tests.support.calculator import CALCULATOR


def _held_out_additions(count: int = 40) -> list[tuple[int, int]]:
    rng = random.Random(1234)
    return [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(count)]


def test_bundled_model_is_the_default_and_small(bundled):
    assert bundled.model_path == str(BUNDLED_MODEL)
    size = sum(f.stat().st_size for f in BUNDLED_MODEL.iterdir())
    assert size < 20 * 1024**2
    assert bundled.model.config.architecture == "Qwen3ForCausalLM"


def test_greedy_two_digit_additions_mostly_right(bundled):
    problems = _held_out_additions()
    conversations = [[{"role": "user", "content": f"What is {a} + {b}?"}] for a, b in problems]
    outs = bundled.chat(conversations, SamplingParams(temperature=0, max_tokens=24))
    correct = 0
    for (a, b), out in zip(problems, outs, strict=True):
        numbers = re.findall(r"-?\d+", out.outputs[0].text)
        correct += bool(numbers) and int(numbers[-1]) == a + b
        assert out.outputs[0].finish_reason == "stop"  # ended its turn with <|im_end|>
    assert correct / len(problems) >= 0.5, f"{correct}/{len(problems)} correct"


def test_calls_the_calculator_when_offered(bundled):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 347 * 29?"},
    ]
    out = bundled.chat(messages, SamplingParams(temperature=0, max_tokens=48), tools=[CALCULATOR])[
        0
    ].outputs[0]
    match = re.search(r"<tool_call>\s*(\{.*\})\s*</tool_call>", out.text, re.S)
    assert match, out.text
    call = json.loads(match.group(1))
    assert call["name"] == "calculator"
    assert call["arguments"]["expression"].replace(" ", "") == "347*29"


def test_cli_generate_prints_tokens_and_logprobs():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlserve.cli",
            "generate",
            "What is 37 + 48?",
            "--chat",
            "--max-tokens",
            "16",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    sample = json.loads(result.stdout.strip().splitlines()[-1])
    assert sample["token_ids"] and len(sample["logprobs"]) == len(sample["token_ids"])
    assert all(lp <= 0 for lp in sample["logprobs"])


def test_cli_rejects_bad_input():
    result = subprocess.run(
        [sys.executable, "-m", "rlserve.cli", "generate", "hi", "--temperature", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "temperature" in result.stderr


def test_chat_with_tools_returns_parsed_calls(bundled):
    from rlserve.tools import batch_generate_with_tools

    outs = batch_generate_with_tools(
        bundled,
        ["What is 347 * 29?", "What is 4 + 3?"],
        [CALCULATOR],
        SamplingParams(temperature=0, max_tokens=48),
    )
    calls = outs[0].outputs[0].tool_calls
    assert len(calls) == 1 and calls[0].name == "calculator"
    assert calls[0].arguments["expression"].replace(" ", "") == "347*29"
    assert outs[0].outputs[0].tool_call_errors == []
    plain = bundled.chat(
        [{"role": "user", "content": "What is 4 + 3?"}],
        SamplingParams(temperature=0, max_tokens=16),
    )[0].outputs[0]
    assert plain.tool_calls is None  # no tools offered: nothing parsed
    import pytest

    with pytest.raises(ValueError, match="tools"):
        batch_generate_with_tools(bundled, ["hi"], [])
