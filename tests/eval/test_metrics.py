"""`summarize` on hand-built records against scores worked out by hand, the records'
validation and JSONL round trip, and the report (table and PNG)."""

from __future__ import annotations

import io
from math import comb

import pytest

from rlserve.eval import SampleRecord, read_jsonl, summarize, write_jsonl
from rlserve.eval.metrics import majority_answer, pass_at
from rlserve.eval.report import plot, print_summary


def record(pid: str, index: int, answer: str | None, correct: bool, **extra) -> SampleRecord:
    tokens = extra.pop("num_tokens", 10)
    fields = dict(
        problem_id=pid, sample_index=index, prompt_ids=[1, 2], completion_ids=[5] * tokens,
        logprobs=[-0.1] * tokens, text=f"= {answer}", answer=answer, correct=correct,
        finish_reason="stop", num_tool_calls=0, error_kind=None, stopped_early=False,
        num_tokens=tokens,
    )  # fmt: skip
    fields.update(extra)
    return SampleRecord(**fields)


def hand_built() -> list[SampleRecord]:
    """k = 4. p1: 3 of 4 right, majority right. p2: 1 of 4 right, the majority (two "7"s)
    wrong, and its last sample timed out. p3: right twice, then early stopping cancelled
    the rest. p4: a sandbox error, an infra error, and "1000" and "1,000", both right."""
    return [
        record("p1", 0, "5", True, num_tokens=8),
        record("p1", 1, "5", True, num_tokens=12),
        record("p1", 2, "6", False, num_tokens=20),
        record("p1", 3, "5", True, num_tokens=8, num_tool_calls=2),
        record("p2", 2, "7", False),  # out of order on purpose: sample_index decides
        record("p2", 0, "3", True),
        record("p2", 1, "7", False),
        record("p2", 3, None, False, error_kind="timeout", finish_reason="abort"),
        record("p3", 0, "9", True),
        record("p3", 1, "9", True),
        record("p3", 2, None, False, stopped_early=True, finish_reason="abort", tokens_saved=6),
        record("p3", 3, None, False, stopped_early=True, finish_reason="abort", tokens_saved=4),
        record("p4", 0, None, False, error_kind="sandbox_error", num_tool_calls=1),
        record("p4", 1, "1000", True, error_kind=None, num_tool_calls=1),
        record("p4", 2, None, False, error_kind="infra_error", finish_reason="error", num_tokens=0),
        record("p4", 3, "1,000", True, num_tool_calls=1),
    ]


def test_summarize_matches_hand_computed_scores():
    s = summarize(hand_built(), k=4)
    assert (s.k, s.num_problems, s.num_samples, s.num_scored) == (4, 4, 16, 14)
    # correct among the 14 scored samples: p1 3, p2 1, p3 2, p4 2
    assert s.accuracy == pytest.approx(8 / 14)
    # majority right for p1, p3 (two "9"s), p4 ("1000" and "1,000" vote together); not p2
    assert s.maj_at[4] == pytest.approx(3 / 4) and s.maj_at_k == s.maj_at[4]
    # maj@1 is the first sample: right for p1, p2 ("3"), p3; p4's first has no answer
    assert s.maj_at[1] == pytest.approx(3 / 4)
    # maj@2: p2 votes "3" then "7", a tie won by the first voted; p4 has only "1000": all right
    assert s.maj_at[2] == 1.0
    unbiased = [1 - comb(1, 4) / comb(4, 4), 1 - comb(3, 4) / comb(4, 4), 1.0, 1.0]
    assert s.pass_at[4] == pytest.approx(sum(unbiased) / 4) == pytest.approx(1.0)
    # pass@1 = mean per-problem c/n: p1 3/4, p2 1/4, p3 2/2, p4 2/4
    assert s.pass_at[1] == pytest.approx((0.75 + 0.25 + 1.0 + 0.5) / 4)
    assert s.mean_tokens == pytest.approx(
        (8 + 12 + 20 + 8 + 4 * 10 + 2 * 10 + 10 + 10 + 0 + 10) / 14
    )
    assert (s.num_tool_calls, s.mean_tool_calls) == (5, pytest.approx(5 / 14))
    assert s.errors == {"timeout": 1, "sandbox_error": 1, "infra_error": 1}
    assert (s.stopped_early, s.tokens_saved) == (2, 10)


def test_maj_at_2_for_p4_ignores_the_unanswered_sample():
    p4 = [r for r in hand_built() if r.problem_id == "p4"]
    assert majority_answer(p4, 2).answer == "1000"
    assert majority_answer(p4, 1) is None


def test_pass_at_is_the_unbiased_estimator():
    samples = [record("p", i, str(i), i in (1, 4)) for i in range(6)]  # n = 6, c = 2
    for j in range(1, 7):
        assert pass_at(samples, j) == pytest.approx(1 - comb(4, j) / comb(6, j))
    assert pass_at(samples[:1], 3) == 0.0  # j capped at n = 1, and that one is wrong
    assert pass_at([], 2) == 0.0


def test_summarize_with_no_records_and_bad_input():
    empty = summarize([], 2)
    assert (empty.num_problems, empty.accuracy, empty.maj_at_k, empty.pass_at_k) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        summarize(hand_built(), 0)
    with pytest.raises(ValueError, match="records must be a list of SampleRecord"):
        summarize([{"problem_id": "p"}], 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"error_kind": "oops"}, "error_kind must be None or one of timeout"),
        ({"sample_index": -1}, "sample_index must be >= 0"),
        ({"num_tool_calls": 1.5}, "num_tool_calls must be an integer"),
        ({"logprobs": [0.0]}, "logprobs \\(1\\) and completion_ids \\(10\\)"),
        ({"problem_id": 3}, "problem_id must be a string"),
    ],
)
def test_records_validate(change, message):
    with pytest.raises(ValueError, match=message):
        record("p", 0, "1", True, **change)


def test_jsonl_round_trip_and_bad_lines(tmp_path):
    records = hand_built()
    path = write_jsonl(records, tmp_path / "out" / "samples.jsonl")
    assert read_jsonl(path) == records
    path.write_text(path.read_text() + '{"problem_id": "x", "surprise": 1}\n')
    with pytest.raises(ValueError, match=f"{path}:17: not a sample record: unknown field"):
        read_jsonl(path)
    with pytest.raises(ValueError, match="records must be SampleRecords"):
        write_jsonl([{"problem_id": "p"}], tmp_path / "x.jsonl")


def test_print_summary_shows_the_scores():
    out = io.StringIO()
    print_summary(summarize(hand_built(), 4), file=out, wall_s=1.25)
    text = out.getvalue()
    for expected in ("accuracy", "0.571", "maj@4", "0.750", "pass@4", "1.000", "1 / 1 / 1",
                     "2 (10)", "1.2 s"):  # fmt: skip
        assert expected in text
    with pytest.raises(ValueError, match="summary must be an EvalSummary"):
        print_summary({"accuracy": 1.0})


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="the optional plot extra")
    path = plot(hand_built(), tmp_path / "eval.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no records to plot"):
        plot([], tmp_path / "none.png")
