"""Seed 003's config and tools.yaml: every bad key or value is a ValueError naming its dotted
path; VERL's GPU-engine keys load unchanged; the built-in tools, class-path tools, tool
response truncation and `max_parallel_calls`.

The `max_parallel_calls` test drives the real rollout loop with `ScriptedPolicy`, a
stand-in policy, because the bundled model never writes two calls in one reply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import AutoTokenizer

from rlserve import InferenceEngine
from rlserve._checks import ParamError
from rlserve.compat.builtin_tools import CodeInterpreter, calculator
from rlserve.compat.config_file import load_engine_config
from rlserve.compat.engine_config import InferenceEngineConfig
from rlserve.compat.multi_turn import MultiTurnRunner
from rlserve.compat.tool_config import load_tool_set, truncate_response
from rlserve.config import BUNDLED_MODEL
from rlserve.sampling_params import SamplingParams
from rlserve.tools import ToolCall, ToolError, execute_calls
from tests.support.rollouts import ScriptedPolicy

MODEL = str(BUNDLED_MODEL)
CALC_TOOL = {
    "name": "calculator",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
}


def config_with(**sections: Any) -> dict[str, Any]:
    rollout = {"name": "native", **sections.pop("rollout", {})}
    return {"model_path": MODEL, "rollout": rollout, **sections}


def shout(text: str) -> str:
    """A tool function named by class path in the tests below."""
    return text.upper() * 5


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"modle_path": MODEL}, "modle_path"),
        (config_with(rollout={"promt_length": 8}), "rollout.promt_length"),
        (config_with(rollout={"multi_turn": {"max_turns": 3}}), "rollout.multi_turn.max_turns"),
        (
            config_with(rollout={"multi_turn": {"max_assistant_turns": 0}}),
            "rollout.multi_turn.max_assistant_turns",
        ),
        (config_with(rollout={"prompt_length": "big"}), "rollout.prompt_length"),
        (config_with(rollout={"response_length": True}), "rollout.response_length"),
        (config_with(rollout={"name": "tgi"}), "rollout.name"),
        (config_with(rollout={"dtype": "int8"}), "rollout.dtype"),
        (config_with(rollout={"top_p": 1.5}), "rollout.top_p"),
        (config_with(rollout={"top_k": -2}), "rollout.top_k"),
        (config_with(rollout={"temperature": -0.5}), "rollout.temperature"),
        (config_with(rollout={"multi_turn": {"format": "xmlish"}}), "rollout.multi_turn.format"),
        (
            config_with(rollout={"multi_turn": {"tool_response_truncate_side": "up"}}),
            "rollout.multi_turn.tool_response_truncate_side",
        ),
        (config_with(rollout={"multi_turn": {"enable": "true"}}), "rollout.multi_turn.enable"),
        (
            config_with(rollout={"multi_turn": {"interaction_config_path": "x.yaml"}}),
            "rollout.multi_turn.interaction_config_path",
        ),
        (config_with(trust_remote_code="yes"), "trust_remote_code"),
        (config_with(rollout={"name": "vllm"}), "rollout.base_url"),
        (
            config_with(rollout={"tensor_model_parallel_size": 2}),
            "rollout.tensor_model_parallel_size",
        ),
        (
            config_with(rollout={"prompt_length": "${data.max_prompt_length}"}),
            "rollout.prompt_length",
        ),
        (config_with(rollout={"engine_kwargs": {"tgi": {}}}), "rollout.engine_kwargs.tgi"),
        (config_with(rollout={"multi_turn": [1]}), "rollout.multi_turn"),
        ({"model_path": MODEL, "rollout": "sglang"}, "rollout"),
        ({"rollout": {"name": "native"}}, "model_path"),
        ([1, 2], "config"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(config, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("$", r"\$")) as info:
        load_engine_config(config)
    assert isinstance(info.value, ParamError) and info.value.field == key


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"model_path": "Qwen/Qwen3-0.6B"}, "model_path"),  # a hub name: not a local folder
        (config_with(rollout={"engine_kwargs": {"native": {"colour": 1}}}), "native.colour"),
        (config_with(rollout={"engine_kwargs": {"native": {"dtype": "float32"}}}), "native.dtype"),
        (config_with(rollout={"device": "tpu"}), "rollout.device"),
    ],
)
def test_bad_backend_settings_name_the_seed_key(config, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        InferenceEngine(config)


def test_verl_engine_keys_load_and_yaml_files_are_read(tmp_path):
    verl = config_with(
        trust_remote_code=False,
        rollout={
            "mode": "async",
            "gpu_memory_utilization": 0.5,
            "enforce_eager": False,
            "free_cache_engine": True,
            "enable_chunked_prefill": True,
            "load_format": "dummy_dtensor",
            "log_prob_micro_batch_size_per_gpu": 32,
            "val_kwargs": {"top_k": -1, "temperature": 0},
            "engine_kwargs": {"vllm": {}, "sglang": {"attention_backend": None}},
            "multi_turn": {"max_user_turns": None, "_target_": "verl.workers.config.X"},
            "dtype": "bf16",
            "max_num_seqs": 8,
        },
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(verl))
    config = load_engine_config(str(path))
    assert isinstance(config, InferenceEngineConfig) and config.base_dir == str(tmp_path)
    assert config.rollout.dtype == "bfloat16" and config.rollout.max_num_seqs == 8
    assert load_engine_config(verl).rollout == config.rollout
    assert load_engine_config(config_with(rollout={"multi_turn": True})).rollout.multi_turn.enable


def test_missing_and_broken_files_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="config: no such file") as info:
        InferenceEngine(str(tmp_path / "nowhere.yaml"))
    assert info.value.field == "config"
    (tmp_path / "broken.yaml").write_text("rollout: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        InferenceEngine(str(tmp_path / "broken.yaml"))
    multi = {"enable": True, "tool_config_path": "missing_tools.yaml"}
    with pytest.raises(ValueError, match="rollout.multi_turn.tool_config_path: no such file"):
        InferenceEngine(config_with(rollout={"multi_turn": multi}))


def write_tools(tmp_path: Path, tools: Any) -> Path:
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump({"tools": tools}))
    return path


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([{"name": "search"}], r"tools\[0\]: tool 'search' has no implementation"),
        ([{**CALC_TOOL, "kind": "x"}], r"tools\[0\]\.kind: unknown key"),
        ([{"name": ""}], r"tools\[0\]"),
        ([{"name": "calc", "class_name": "no_such_module.Tool"}], "cannot import"),
        ([{"name": "calc", "class_name": "shout"}], "dotted path"),
        ([{"name": "calc", "class_name": "pathlib.Path"}], "no execute method"),
        ([CALC_TOOL, CALC_TOOL], r"tools\[1\]: a second tool named 'calculator'"),
        ("calculator", "'tools' list"),
    ],
)
def test_bad_tools_yaml_names_the_entry(tmp_path, tools, message):
    with pytest.raises(ValueError, match=message):
        load_tool_set(write_tools(tmp_path, tools), 256, "middle")


def test_class_path_function_and_response_truncation(tmp_path):
    tools = [{"name": "shout", "class_name": f"{__name__}.shout", "parameters": {}}]
    tool_set = load_tool_set(write_tools(tmp_path, tools), 12, "left")
    assert tool_set.executors["shout"](text="ab") == "ABABABABAB"
    assert tool_set.executors["shout"](text="abc") == "ABCABCABCABC...(truncated)"
    assert truncate_response("0123456789", 4, "right") == "(truncated)...6789"
    assert truncate_response("0123456789", 4, "middle") == "01...(truncated)...89"
    assert truncate_response("0123", 4, "middle") == "0123"


def test_builtin_calculator():
    assert calculator("347 * 29") == "10063"
    assert calculator("10 / 4") == "2.5" and calculator("-(2 ** 10) % 7") == "5"
    for bad in ("1 / 0", "__import__('os')", "9 ** 99999", "x + 1", "2 +"):
        with pytest.raises(ToolError):
            calculator(bad)
    wrong = ToolCall("calculator", {"expr": "1"}, "", 0, 0)
    results = execute_calls([wrong], {"calculator": calculator})
    assert results.infra_error is None
    assert results.messages[0]["content"].startswith("Error: bad arguments for 'calculator'")


def test_builtin_code_interpreter_runs_in_the_sandbox():
    tool = CodeInterpreter(timeout_s=10.0)
    try:
        assert tool("print(6 * 7)") == "42\n"
        assert tool("x = [1, 2]\nsum(x)") == "3\n"  # a last expression is shown
        assert "ZeroDivisionError" in tool("1 / 0")
        with pytest.raises(ToolError):
            tool("   ")
    finally:
        tool.close()
        tool.close()  # idempotent


def test_max_parallel_calls_runs_the_first_calls_only(tmp_path):
    tool_set = load_tool_set(write_tools(tmp_path, [CALC_TOOL]), 256, "middle")
    config = load_engine_config(config_with(rollout={"multi_turn": {"enable": True}}))
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    call = (
        '<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{}"}}}}\n</tool_call>'
    )

    def reply(prompt: str) -> str:
        return (
            "done" if "<tool_response>" in prompt else call.format("1 + 1") + call.format("2 * 3")
        )

    policy = ScriptedPolicy(tokenizer, reply)
    runner = MultiTurnRunner(policy, tool_set, config)
    [response] = runner.run([[{"role": "user", "content": "go"}]], SamplingParams(max_tokens=64))
    messages = response.extra["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert len(messages[1]["tool_calls"]) == 1 and messages[2]["content"] == "2"
