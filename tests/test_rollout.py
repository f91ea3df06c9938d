"""Multi-turn trajectories: token bookkeeping, masks, segments, tools, limits, batching.

Bundled-model tests run real calculator rollouts; the others drive the same loop with a
scripted policy (fixed replies, bundled tokenizer) to reach paths a trained model avoids.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import operator
import time
from collections.abc import Callable

import pytest

from rlserve import SamplingParams
from rlserve.rl import ToolError, rollout, rollout_batch
from tests.support.calculator import CALCULATOR
from tests.support.numeric import max_abs_diff
from tests.support.rollouts import (
    QUESTION,
    ScriptedPolicy,
    assert_matches_fresh_render,
    check_consistent,
    rendered_ids,
)

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "347 * 29"}}\n</tool_call>'
GREEDY = SamplingParams(temperature=0, max_tokens=48)

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculator(expression: str) -> str:
    """Integer arithmetic by walking the AST (never eval)."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ToolError(f"unsupported expression {expression!r}")

    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except SyntaxError:
        raise ToolError(f"not an expression: {expression!r}") from None


def by_round(*replies: str) -> Callable[[str], str]:
    """Reply i after i tool responses (the last reply repeats)."""
    return lambda prompt: replies[min(prompt.count("<tool_response>"), len(replies) - 1)]


# ---- the bundled model -------------------------------------------------------------------


def test_bundled_calculator_rollout_masks_logprobs_segments(bundled):
    traj = rollout(bundled, QUESTION, [CALCULATOR], {"calculator": calculator}, 4, GREEDY)
    tok = bundled.tokenizer
    assert traj.finish_reason == "stop" and not traj.infra_error and traj.num_turns == 2
    assert traj.prompt_ids == bundled.render_chat(QUESTION, [CALCULATOR])
    kinds = [s.kind for s in traj.segments]
    assert kinds[0] == "model" and kinds[-1] == "model" and "tool" in kinds
    assert set(kinds[1:-1]) == {"tool", "template"}
    first, last = traj.segments[0], traj.segments[-1]
    assert tok.decode(traj.completion_ids[first.start : first.end]) == CALL + "<|im_end|>"
    tool_text = "".join(
        tok.decode(traj.completion_ids[s.start : s.end]) for s in traj.segments if s.kind == "tool"
    )
    assert tool_text.strip() == "10063"
    assert "10063" in tok.decode(traj.completion_ids[last.start : last.end])
    check_consistent(traj)
    # Contract 2 across turns: sampled logprobs are the teacher-forced ones of the stream.
    scored = bundled.score(traj.prompt_ids, traj.completion_ids, temperature=1.0)
    for lp, ref, mask in zip(traj.logprobs, scored, traj.loss_mask, strict=True):
        assert mask == 0 or abs(lp - ref) <= 1e-5
    assert {v for v, m in zip(traj.weight_versions, traj.loss_mask, strict=True) if m} == {
        bundled.policy_version
    }
    # Messages: OpenAI shape, and rendering them again gives the same tokens.
    assistant, tool, answer = traj.messages[2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "calculator"
    assert tool == {
        "role": "tool",
        "tool_call_id": assistant["tool_calls"][0]["id"],
        "name": "calculator",
        "content": "10063",
    }
    assert answer["role"] == "assistant" and "10063" in answer["content"]
    assert traj.template_exact
    assert_matches_fresh_render(tok, traj, traj.messages, [CALCULATOR])
    assert_matches_fresh_render(tok, traj, traj.template_messages, [CALCULATOR])


def test_bundled_grpo_group_shares_one_batch_per_round(bundled, monkeypatch):
    running: list[int] = []
    step = bundled.step

    def counting_step():
        out = step()
        running.append(bundled.num_running + sum(o.finished for o in out))
        return out

    monkeypatch.setattr(bundled, "step", counting_step)
    params = SamplingParams(temperature=1.0, max_tokens=40, seed=11)
    group = rollout_batch(
        bundled, [QUESTION] * 8, [CALCULATOR], {"calculator": calculator}, 3, params
    )
    for traj in group:
        check_consistent(traj)
    rounds = max(t.num_turns for t in group)
    longest = sum(
        max(
            (len(s) for t in group for s in t.segments if s.kind == "model" and s.turn == r),
            default=0,
        )
        for r in range(rounds)
    )
    serial = sum(len(s) for t in group for s in t.segments if s.kind == "model")
    assert longest <= len(running) <= longest + 2 * rounds < serial
    assert max(running) == 8  # the whole group was in one batch


def test_bundled_executor_exception_is_an_infra_error(bundled):
    def broken(expression: str) -> str:
        raise ConnectionError("calculator service unreachable")

    traj = rollout(bundled, QUESTION, [CALCULATOR], {"calculator": broken}, 4, GREEDY)
    assert traj.infra_error and traj.finish_reason == "infra_error"
    assert "ConnectionError" in traj.error
    assert [s.kind for s in traj.segments] == ["model"]  # nothing appended after the call
    check_consistent(traj)


def test_bundled_request_failing_inside_the_engine_is_an_infra_error(bundled, monkeypatch):
    # Fault injection, not a mock: the real engine runs a request corrupted after admission
    # (the stand-in for an input a validation gap lets through), and its sampling fails.
    admit = bundled.add_request

    def add_corrupted(prompt, params, *args, **kwargs):
        params = copy.copy(params)  # the engine keeps this object: corrupt a private copy
        request_id = admit(prompt, params, *args, **kwargs)
        params.min_tokens, params.stop_token_ids = 2, [10**9]
        return request_id

    monkeypatch.setattr(bundled, "add_request", add_corrupted)
    traj = rollout(bundled, QUESTION, [CALCULATOR], {"calculator": calculator}, 4, GREEDY)
    assert traj.infra_error and traj.finish_reason == "infra_error"
    assert "IndexError" in traj.error
    assert bundled.block_manager.num_used_blocks == 0


def test_bundled_unknown_tool_is_fed_back_not_an_infra_error(bundled):
    traj = rollout(bundled, QUESTION, [CALCULATOR], {}, 2, GREEDY)
    assert not traj.infra_error
    assert traj.messages[3]["role"] == "tool"
    assert traj.messages[3]["content"].startswith("Error: unknown tool 'calculator'")
    assert traj.num_turns == 2 and "tool" in [s.kind for s in traj.segments]
    check_consistent(traj)


def test_bundled_max_assistant_turns(bundled):
    traj = rollout(bundled, QUESTION, [CALCULATOR], {"calculator": calculator}, 1, GREEDY)
    assert traj.finish_reason == "max_turns" and traj.num_turns == 1
    assert [s.kind for s in traj.segments] == ["model"]


# ---- scripted policies (bundled tokenizer) -----------------------------------------------


def test_malformed_call_is_fed_back(bundled):
    bad = '<tool_call>\n{"name": "calculator", "arguments": {oops}\n</tool_call>'
    policy = ScriptedPolicy(bundled.tokenizer, by_round(bad, "I cannot tell."))
    traj = rollout(policy, QUESTION, [CALCULATOR], {"calculator": calculator}, 4)
    assert traj.finish_reason == "stop" and not traj.infra_error
    assert traj.messages[3]["role"] == "tool" and traj.messages[3]["content"].startswith("Error:")
    assert traj.messages[2]["content"] == "" and "tool_calls" not in traj.messages[2]
    check_consistent(traj)
    assert traj.template_exact
    # The malformed call is cut out of the OpenAI-shaped message, so only the exact
    # sampled text (template_messages) re-renders to the stream.
    assert_matches_fresh_render(bundled.tokenizer, traj, traj.template_messages, [CALCULATOR])


def test_tool_error_and_async_executors(bundled):
    async def slow_calculator(expression: str) -> str:
        await asyncio.sleep(0)
        return calculator(expression)

    policy = ScriptedPolicy(
        bundled.tokenizer, by_round(CALL.replace("347 * 29", "347 ** 2"), CALL, "Done.")
    )
    traj = rollout(policy, QUESTION, [CALCULATOR], {"calculator": slow_calculator}, 4)
    assert traj.finish_reason == "stop" and traj.num_turns == 3
    contents = [m["content"] for m in traj.messages if m["role"] == "tool"]
    assert contents[0].startswith("Error: unsupported expression") and contents[1] == "10063"
    assert_matches_fresh_render(bundled.tokenizer, traj, traj.messages, [CALCULATOR])


def test_bad_arguments_are_a_model_error(bundled):
    call = CALL.replace('"expression"', '"expr"')
    policy = ScriptedPolicy(bundled.tokenizer, by_round(call, "Done."))
    traj = rollout(policy, QUESTION, [CALCULATOR], {"calculator": calculator}, 4)
    assert not traj.infra_error
    assert traj.messages[3]["content"].startswith("Error: bad arguments for 'calculator'")


def test_tool_timeout_is_an_infra_error(bundled):
    def stuck(expression: str) -> str:
        time.sleep(1.0)
        return "0"

    policy = ScriptedPolicy(bundled.tokenizer, by_round(CALL, "Done."))
    traj = rollout(policy, QUESTION, [CALCULATOR], {"calculator": stuck}, 4, tool_timeout_s=0.05)
    assert traj.infra_error and "longer than" in traj.error


def test_non_canonical_tokens_are_kept_and_text_aligned(bundled):
    policy = ScriptedPolicy(bundled.tokenizer, by_round(CALL, "347 * 29 = 10063"), split_chars=True)
    traj = rollout(policy, QUESTION, [CALCULATOR], {"calculator": calculator}, 4)
    tok = bundled.tokenizer
    sampled = [t for t, m in zip(traj.completion_ids, traj.loss_mask, strict=True) if m]
    assert sampled == policy._encode(CALL) + [policy.end_id] + policy._encode(
        "347 * 29 = 10063"
    ) + [policy.end_id]
    assert traj.template_exact  # aligned on text: the stream's text is the template's
    fresh = tok.apply_chat_template(traj.messages, tools=[CALCULATOR], tokenize=False)
    assert fresh == tok.decode(traj.token_ids) + "\n"
    assert rendered_ids(tok, traj.messages, [CALCULATOR])[: len(traj.token_ids)] != traj.token_ids


def test_other_stop_token_uses_the_fallback_and_is_recorded(bundled):
    policy = ScriptedPolicy(bundled.tokenizer, by_round(CALL, "Done."), end="<|endoftext|>")
    traj = rollout(policy, QUESTION, [CALCULATOR], {"calculator": calculator}, 4)
    assert traj.finish_reason == "stop" and not traj.template_exact
    check_consistent(traj)
    text = bundled.tokenizer.decode(traj.completion_ids)
    assert text.startswith(CALL + "<|endoftext|><|im_start|>user\n<tool_response>\n10063")


def test_total_token_budget(bundled):
    policy = ScriptedPolicy(bundled.tokenizer, by_round(CALL))
    prompt_len = len(bundled.render_chat(QUESTION, [CALCULATOR]))
    budget = prompt_len + 60
    traj = rollout(
        policy, QUESTION, [CALCULATOR], {"calculator": calculator}, 10, max_total_tokens=budget
    )
    assert traj.finish_reason == "max_total_tokens" and not traj.infra_error
    assert len(traj.token_ids) <= budget
    check_consistent(traj)
    too_long = rollout(policy, QUESTION, [CALCULATOR], max_total_tokens=prompt_len)
    assert too_long.infra_error and too_long.completion_ids == []


def test_scripted_group_is_one_round_per_turn(bundled):
    policy = ScriptedPolicy(bundled.tokenizer, by_round(CALL, CALL, "Done."))
    group = rollout_batch(
        policy,
        [QUESTION] * 8,
        [CALCULATOR],
        {"calculator": calculator},
        5,
        SamplingParams(seed=100, max_tokens=64),
    )
    assert policy.rounds == [8, 8, 8]
    assert policy.seeds == [list(range(100, 108))] * 3  # copies of a prompt differ
    assert all(t.finish_reason == "stop" and t.num_turns == 3 for t in group)


def test_bad_arguments_raise_value_errors(bundled):
    policy = ScriptedPolicy(bundled.tokenizer, by_round("hi"))
    with pytest.raises(ValueError, match="n = 1"):
        rollout(policy, QUESTION, params=SamplingParams(n=2))
    with pytest.raises(ValueError, match="max_assistant_turns"):
        rollout(policy, QUESTION, max_assistant_turns=0)
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        rollout(policy, QUESTION, parser="nope")
    with pytest.raises(ValueError, match="conversation"):
        rollout_batch(policy, [[]])
    with pytest.raises(TypeError, match="Engine"):
        rollout(object(), QUESTION)


# ---- through the HTTP client ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(make_engine):
    from rlserve.server import ServerConfig
    from tests.support.servers import RunningServer

    server = RunningServer(make_engine(), ServerConfig(max_tokens=64, flush_interval_ms=5.0))
    yield server
    server.close()


def test_client_rollout_matches_the_engine(bundled, served):
    from rlserve.client import Client

    with Client(served.url, tokenizer=bundled.tokenizer, max_retries=0) as client:
        group = [QUESTION] * 3
        remote = rollout_batch(client, group, [CALCULATOR], {"calculator": calculator}, 4, GREEDY)
    local = rollout_batch(bundled, group, [CALCULATOR], {"calculator": calculator}, 4, GREEDY)
    for r, loc in zip(remote, local, strict=True):
        assert r.completion_ids == loc.completion_ids and r.loss_mask == loc.loss_mask
        assert r.finish_reason == loc.finish_reason and not r.infra_error
        assert max_abs_diff(r.logprobs, loc.logprobs) <= 1e-4
        assert r.weight_versions == loc.weight_versions  # the server reports them per token
        assert 0 in r.weight_versions
        check_consistent(r)


def test_template_that_drops_reasoning_uses_the_fallback(bundled):
    """Where a template rewrites an assistant turn (here: it drops <think> blocks, as many
    reasoning templates do for earlier turns), the stream keeps the sampled reasoning and
    cannot equal a fresh render; the trajectory records it (`template_exact` False)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled.model_path)
    keep = "{%- set content = text_of(message.content) -%}"
    assert keep in tok.chat_template
    tok.chat_template = tok.chat_template.replace(
        keep, "{%- set content = text_of(message.content).split('</think>')[-1] -%}"
    )
    policy = ScriptedPolicy(tok, by_round("<think>347 * 29 is big</think>" + CALL, "Done."))
    traj = rollout(policy, QUESTION, [CALCULATOR], {"calculator": calculator}, 4)
    assert traj.finish_reason == "stop" and not traj.template_exact
    assert traj.messages[2]["reasoning_content"] == "347 * 29 is big"
    check_consistent(traj)
    text = tok.decode(traj.completion_ids)
    assert text.startswith("<think>347 * 29 is big</think>" + CALL + "<|im_end|>\n<|im_start|>user")
    assert rendered_ids(tok, traj.template_messages, [CALCULATOR]) != traj.token_ids + [
        tok.encode("\n")[0]
    ]
