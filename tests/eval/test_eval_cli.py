"""`rlserve eval` end to end (issue #14's "Done when"): a 10-problem file on the bundled
model, its scores checked against ones computed here from the JSONL of samples it wrote;
a TIR run whose code raises and loops forever in the real sandbox; the bundled set's
output; and bad flags refused before anything runs.

The TIR run uses a scripted policy (tests/support/rollouts.py) in place of a model: the
bundled model never learned to write Python, so it cannot be made to write code that
raises or loops. Everything else in that run is real: runner, TIR mode, sandbox, scoring.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from math import comb
from pathlib import Path

import pytest

from rlserve.cli import main as rlserve_main
from rlserve.eval import answers_equal, extract_answer, read_jsonl, vote_key
from rlserve.eval.cli import main as eval_main
from tests.support.rollouts import ScriptedPolicy
from tests.support.servers import main_server, wait_until

# Greedy on the bundled model: it always gets 2-digit sums right and 3-digit sums wrong
# (it learned to hand those to its calculator tool, which is not offered here).
EASY = ["23 + 45", "61 + 17", "38 + 50", "72 + 19", "44 + 44", "15 + 86"]
HARD = ["347 + 589", "612 + 275", "908 + 463", "150 + 999"]
# Sampled at temperature 1, its answers to these vary.
UNSURE = ["87 - 29", "7 * 86", "64 - 38", "9 * 47", "71 - 45", "6 * 58", "95 - 67"]


def write_problems(path: Path, expressions: list[str]) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"What is {e}?", "answer": f"#### {eval(e)}"}
        for i, e in enumerate(expressions)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scores_by_hand(records: list, golds: dict[str, str], k: int) -> dict:
    """accuracy, maj@k and pass@k from the records' texts, written out plainly."""
    scored = [r for r in records if not r.stopped_early]
    right = {r.problem_id: 0 for r in records}
    counted = {r.problem_id: 0 for r in records}
    votes: dict[str, Counter] = {pid: Counter() for pid in golds}
    first_of: dict[str, dict] = {pid: {} for pid in golds}
    for r in sorted(scored, key=lambda r: r.sample_index):
        answer = extract_answer(r.text)
        ok = answers_equal(answer, golds[r.problem_id])
        right[r.problem_id] += ok
        counted[r.problem_id] += 1
        if vote_key(answer) is not None:
            votes[r.problem_id][vote_key(answer)] += 1
            first_of[r.problem_id].setdefault(vote_key(answer), ok)
    maj = 0
    for pid, counter in votes.items():
        if counter:
            top = max(counter.values())
            maj += next(ok for key, ok in first_of[pid].items() if counter[key] == top)
    passes = [
        1 - comb(counted[p] - right[p], min(k, counted[p])) / comb(counted[p], min(k, counted[p]))
        for p in golds
    ]
    return {
        "accuracy": sum(right.values()) / len(scored),
        "maj": maj / len(golds),
        "pass": sum(passes) / len(golds),
    }


def golds_of(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["id"]: row["answer"].split("#### ")[1] for row in rows}


def test_rlserve_eval_on_a_ten_problem_file(tmp_path, capsys):
    """Greedy, through the top-level command and its own native engine."""
    data = write_problems(tmp_path / "ten.jsonl", EASY + HARD)
    out, summary = tmp_path / "samples.jsonl", tmp_path / "summary.json"
    argv = ["eval", "--data", str(data), "--output", str(out), "--summary-json", str(summary)]
    assert rlserve_main([*argv, "--backend", "native", "--max-tokens", "32"]) == 0
    printed = capsys.readouterr()
    records = read_jsonl(out)
    assert [r.problem_id for r in records] == [f"q{i}" for i in range(10)]
    scores = json.loads(summary.read_text())
    hand = scores_by_hand(records, golds_of(data), k=1)
    assert scores["accuracy"] == pytest.approx(hand["accuracy"]) == 0.6  # the 6 easy ones
    assert scores["maj_at"]["1"] == pytest.approx(hand["maj"]) == 0.6
    assert scores["pass_at"]["1"] == pytest.approx(hand["pass"]) == 0.6
    assert [r.correct for r in records] == [True] * 6 + [False] * 4
    assert records[0].text == "23 + 45 = 68" and records[0].answer == "68"
    assert re.search(r"accuracy\s*│\s*0\.600", printed.out)
    assert "100%" in printed.err  # the progress bar ran to the end


def test_the_same_eval_on_a_server_is_one_flag_away(tmp_path, bundled, make_engine, pytestconfig):
    """`--server URL`: the remote backend over a real rlserve server on loopback gives the
    native engine's greedy tokens."""
    server = main_server(make_engine, pytestconfig)
    data = write_problems(tmp_path / "ten.jsonl", EASY + HARD)
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    common = ["--data", str(data), "--max-tokens", "32", "--no-progress"]
    assert eval_main([*common, "--output", str(local)], backend=bundled) == 0
    assert eval_main([*common, "--output", str(remote), "--server", server.url]) == 0
    here, there = read_jsonl(local), read_jsonl(remote)
    assert [r.completion_ids for r in there] == [r.completion_ids for r in here]
    assert [r.prompt_ids for r in there] == [r.prompt_ids for r in here]
    assert [r.correct for r in there] == [True] * 6 + [False] * 4
    assert wait_until(server.idle, 10)


def test_sampled_k4_scores_match_the_samples(tmp_path, bundled):
    data = write_problems(tmp_path / "ten.jsonl", EASY[:2] + HARD[:1] + UNSURE)
    out, summary = tmp_path / "samples.jsonl", tmp_path / "summary.json"
    argv = ["--data", str(data), "--k", "4", "--temperature", "1.0", "--seed", "3",
            "--output", str(out), "--summary-json", str(summary), "--no-progress"]  # fmt: skip
    assert eval_main(argv, backend=bundled) == 0
    records = read_jsonl(out)
    assert len(records) == 10 * 4
    scores = json.loads(summary.read_text())
    hand = scores_by_hand(records, golds_of(data), k=4)
    assert scores["accuracy"] == pytest.approx(hand["accuracy"])
    assert scores["maj_at"]["4"] == pytest.approx(hand["maj"])
    assert scores["pass_at"]["4"] == pytest.approx(hand["pass"])
    stopped = [r for r in records if r.stopped_early]
    assert scores["stopped_early"] == len(stopped)
    assert scores["tokens_saved"] == sum(r.tokens_saved for r in records)
    assert all(r.answer is None and not r.correct for r in stopped)
    assert bundled.block_manager.num_used_blocks == 0


def tir_reply(prompt: str) -> str:
    """Per problem: code that prints the sum, code that raises, code that never ends, or
    no code; after the output block, the answer read from that output."""
    question = prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
    so_far = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if "```output" in so_far:
        output = so_far.rsplit("```output\n", 1)[1].split("```")[0]
        numbers = re.findall(r"\d+", output)
        return f"So the answer is \\boxed{{{numbers[-1] if numbers else 0}}}."
    a, b = (int(n) for n in re.findall(r"\d+", question)[:2])
    if "Boom" in question:
        return "Let me check.<tool_call>\nraise ValueError('boom')\n</tool_call>"
    if "Loop" in question:
        return "Let me check.<tool_call>\nwhile True:\n    pass\n</tool_call>"
    if "Direct" in question:
        return f"{a} + {b} = {a + b + (1 if a > 50 else 0)}"  # wrong when a > 50
    return f"Let me check.<tool_call>\nprint({a} + {b})\n</tool_call>"


def test_tir_run_with_a_sandbox_error_and_a_timeout(tmp_path, bundled):
    questions = [f"What is {a} + {b}?" for a, b in [(1, 2), (30, 40), (5, 6), (7, 8), (9, 9)]]
    questions += ["Boom: what is 2 + 2?", "Loop: what is 3 + 3?"]
    questions += ["Direct: what is 10 + 20?", "Direct: what is 60 + 1?", "What is 11 + 22?"]
    golds = ["3", "70", "11", "15", "18", "4", "6", "30", "61", "33"]
    data = tmp_path / "tir.jsonl"
    rows = [
        {"id": f"t{i}", "question": q, "answer": g}
        for i, (q, g) in enumerate(zip(questions, golds, strict=True))
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, summary = tmp_path / "samples.jsonl", tmp_path / "summary.json"
    policy = ScriptedPolicy(bundled.tokenizer, tir_reply)
    argv = ["--data", str(data), "--tir", "--sandbox-timeout-s", "4", "--output", str(out),
            "--summary-json", str(summary), "--no-progress"]  # fmt: skip
    assert eval_main(argv, backend=policy) == 0
    records = {r.problem_id: r for r in read_jsonl(out)}
    assert "```output\n3\n```" in records["t0"].text and records["t0"].answer == "3"
    assert records["t5"].error_kind == "sandbox_error" and "ValueError: boom" in records["t5"].text
    assert records["t6"].error_kind == "timeout" and "TimeoutError" in records["t6"].text
    assert [records[f"t{i}"].correct for i in range(10)] == [True] * 5 + [False] * 2 + [
        True, False, True
    ]  # fmt: skip
    scores = json.loads(summary.read_text())
    hand = scores_by_hand(list(records.values()), dict(zip(records, golds, strict=True)), k=1)
    assert scores["accuracy"] == pytest.approx(hand["accuracy"]) == 0.7
    assert scores["maj_at"]["1"] == pytest.approx(0.7)
    assert scores["errors"] == {"timeout": 1, "sandbox_error": 1, "infra_error": 0}
    assert scores["num_tool_calls"] == 8  # all but the two direct answers ran code once


def test_the_bundled_sets_output(tmp_path, bundled, capsys):
    out, summary = tmp_path / "samples.jsonl", tmp_path / "summary.json"
    argv = ["--limit", "12", "--output", str(out), "--summary-json", str(summary), "--no-progress"]
    assert eval_main(argv, backend=bundled) == 0
    table = capsys.readouterr().out
    for row in ("problems", "accuracy", "maj@1", "pass@1", "mean tokens", "errors", "wall time"):
        assert row in table
    records = read_jsonl(out)
    assert [r.problem_id for r in records] == [f"arith-{i:03d}" for i in range(12)]
    tokenizer = bundled.tokenizer
    for r in records:
        prompt = tokenizer.decode(r.prompt_ids)
        assert prompt.startswith("<|im_start|>system\nSolve the following math problem.")
        assert prompt.endswith("<|im_start|>assistant\n")
        assert r.num_tokens == len(r.completion_ids) == len(r.logprobs) > 0
        assert all(lp <= 0.0 for lp in r.logprobs)
        assert tokenizer.decode(r.completion_ids, skip_special_tokens=True) == r.text
        assert r.finish_reason == "stop" and r.error_kind is None
    scores = json.loads(summary.read_text())
    assert scores["num_problems"] == 12 and 0.0 < scores["accuracy"] < 1.0
    assert set(scores) >= {"accuracy", "maj_at", "pass_at", "mean_tokens", "errors", "wall_s"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--k", "0"], "k must be a positive integer"),
        (["--data", "/nonexistent.jsonl"], "cannot read problems file"),
        (["--prompt", "nope"], "unknown prompt 'nope'"),
        (["--temperature", "-1"], "temperature"),
        (["--backend", "remote"], "--backend remote needs --server URL"),
        (["--backend", "native", "--server", "http://x"], "--server is for the remote backend"),
        (["--problem-budget-s", "0"], "problem_budget_s"),
    ],
)
def test_bad_flags_are_refused_with_a_clear_error(argv, message, capsys):
    assert eval_main([*argv, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        rlserve_main(["eval", "-h"])
    text = capsys.readouterr().out
    for flag in ("--data", "--k", "--tir", "--backend", "--server", "--run-budget-s", "--plot"):
        assert flag in text
