"""`rlserve.prompts`: named templates, filling, chat messages, rendering through a chat
template, code tags, and bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from rlserve.config import BUNDLED_MODEL
from rlserve.prompts import PromptTemplate, get_prompt, prompt_names
from rlserve.rl import TIRConfig

PROBLEM = {"problem": "What is 37 + 45?"}


def test_the_named_templates():
    assert {"generic/math", "tir/math", "generic/plain"} <= set(prompt_names())
    for name in prompt_names():
        assert get_prompt(name).name == name
        assert get_prompt(name).keys == ["problem"]


def test_generic_math_messages_and_text():
    prompt = get_prompt("generic/math")
    system = (
        "Solve the following math problem. "
        "Make sure to put the answer (and only answer) inside \\boxed{}."
    )
    assert prompt.messages(PROBLEM) == [
        {"role": "system", "content": system},
        {"role": "user", "content": "What is 37 + 45?"},
    ]
    assert prompt.fill(PROBLEM) == f"{system}\n\nWhat is 37 + 45?"
    assert get_prompt("generic/plain").fill(PROBLEM) == "What is 37 + 45?"
    assert get_prompt("generic/plain").messages(PROBLEM) == [
        {"role": "user", "content": "What is 37 + 45?"}
    ]


def test_tir_code_tags_default_to_the_tir_modes_and_can_change():
    prompt = get_prompt("tir/math")
    assert (prompt.code_begin, prompt.code_end) == (TIRConfig().begin, TIRConfig().end)
    assert "between <tool_call> and </tool_call>" in prompt.fill(PROBLEM)
    assert "up to 8 Python code calls" in prompt.fill(PROBLEM)
    seed_tags = prompt.with_code_tags("<tool_call>\n", "</tool_call>\n")
    assert seed_tags.code_execution_args() == {
        "code_begin": "<tool_call>\n",
        "code_end": "</tool_call>\n",
        "code_output_begin": "```output\n",
        "code_output_end": "```\n",
    }
    fenced = prompt.with_code_tags("```python\n", "```\n")
    assert "between ```python and ```;" in fenced.fill(PROBLEM)
    assert get_prompt("tir/math").code_begin == "<tool_call>"  # the registry's is unchanged


def test_render_uses_the_chat_template_when_there_is_one():
    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_MODEL))
    prompt = get_prompt("generic/math")
    rendered = prompt.render(PROBLEM, tokenizer)
    expected = tokenizer.apply_chat_template(
        prompt.messages(PROBLEM), tokenize=False, add_generation_prompt=True
    )
    assert rendered == expected and rendered.endswith("<|im_start|>assistant\n")
    assert prompt.render(PROBLEM, None) == prompt.fill(PROBLEM)

    class NoTemplate:
        chat_template = None

    assert prompt.render(PROBLEM, NoTemplate()) == prompt.fill(PROBLEM)


def test_a_template_of_ones_own():
    prompt = PromptTemplate(name="mine", system="Be brief about {topic}.", user="Q: {q}\nA:")
    assert prompt.keys == ["topic", "q"]
    assert prompt.fill({"topic": "sums", "q": "1+1?", "extra": "ignored"}) == (
        "Be brief about sums.\n\nQ: 1+1?\nA:"
    )


def test_unknown_prompt_names_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown prompt 'generic/maths'; the prompts are .*tir/math"
    ):
        get_prompt("generic/maths")
    with pytest.raises(ValueError, match="unknown prompt None"):
        get_prompt(None)


def test_missing_and_bad_values():
    prompt = get_prompt("generic/math")
    with pytest.raises(ValueError, match="prompt 'generic/math' needs a value for 'problem'"):
        prompt.fill({"question": "What is 1 + 1?"})
    with pytest.raises(ValueError, match="the value for 'problem' must be a string"):
        prompt.messages({"problem": 3})
    with pytest.raises(ValueError, match="values must be a dict"):
        prompt.fill("What is 1 + 1?")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user": "Solve {"}, "prompt 'bad' user: .*write literal braces as"),
        ({"user": "Solve {0}"}, "placeholder \\{0\\} is not a name"),
        ({"user": ""}, "user must be a non-empty string"),
        ({"user": "q", "code_end": ""}, "code_end must be a non-empty string"),
        ({"user": "q", "max_code_runs": 0}, "max_code_runs must be a positive integer"),
        ({"user": "q", "system": None}, "system must be a string"),
    ],
)
def test_bad_templates(fields, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(name="bad", **fields)


def test_prompts_import_without_torch():
    code = "import sys, rlserve.prompts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
