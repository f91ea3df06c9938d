"""Answer extraction (boxed, ####, last number), equivalence through math-verify, and the
majority-vote key."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from rlserve.eval import answers_equal, extract_answer, vote_key
from rlserve.eval.answers import last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("first \\boxed{1}, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last one
        ("\\boxed{\\left\\{1, 2\\right\\}}", "\\left\\{1, 2\\right\\}"),  # nested braces
        ("\\boxed{ \\sqrt{\\frac{a}{b}} } done", "\\sqrt{\\frac{a}{b}}"),
        ("\\fbox{7}", "7"),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 1,000\n", "1,000"),
        ("37 + 45 = 82", "82"),  # the last number
        ("It is 3.5 metres, not 2", "2"),
        ("x = -3.", "-3"),
        ("10-3", "3"),  # a minus after a digit is a subtraction, not a sign
        ("total: 1,234,567 apples", "1,234,567"),
        ("\\boxed{12", "12"),  # a box never closed: fall back to the last number
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "no digits here", "\\boxed{}", "#### ", None, 12])
def test_extract_answer_finds_nothing(text):
    assert extract_answer(text) is None


def test_last_boxed_counts_braces():
    assert last_boxed("\\boxed{a{b}c} and \\boxed{{x}}") == "{x}"
    assert last_boxed("\\boxed{a{b}") is None
    assert last_boxed("nothing") is None


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("72", "72"),
        ("0.5", "1/2"),
        ("1/2", "\\frac{1}{2}"),
        ("0.75", "\\dfrac{3}{4}"),
        ("1,000", "1000"),
        ("1000.0", "1000"),
        ("\\frac{6}{8}", "\\frac{3}{4}"),
        ("x + 1", "1 + x"),
        ("\\{2, 1\\}", "\\{1, 2\\}"),
        ("1.41421356", "\\sqrt{2}"),
    ],
)
def test_equivalent_answers(predicted, gold):
    assert answers_equal(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("83", "82"),
        ("-2", "2"),
        ("\\frac{1}{3}", "0.5"),
        ("x + 2", "x + 1"),
        (None, "1"),
        ("", "1"),
        ("1", ""),
    ],
)
def test_different_answers(predicted, gold):
    assert not answers_equal(predicted, gold)


@pytest.mark.parametrize(
    "garbage", ["}{", "\\frac{", "$$$", "\\boxed{\\boxed{", "1/0", "((((", "\\undefined{x}", "🙂"]
)
def test_answers_equal_never_raises(garbage):
    assert answers_equal(garbage, "1") is False
    assert answers_equal("1", garbage) is False
    assert answers_equal(garbage, garbage) is True  # the exact-string fast path


def test_answers_equal_off_the_main_thread():
    """math-verify's signal-based timeout only works in the main thread; off it the
    comparison still runs."""
    results = []
    worker = threading.Thread(target=lambda: results.append(answers_equal("0.5", "\\frac{1}{2}")))
    worker.start()
    worker.join()
    assert results == [True]


@pytest.mark.parametrize(
    ("a", "b"),
    [("1,000", "1000"), ("1000.0", "1000"), ("0.5", "\\frac{1}{2}"), ("1/2", "\\dfrac{1}{2}"),
     (" x + 1 ", "x+1"), ("$7$", "7"), ("\\left(1,2\\right)", "(1,2)")],
)  # fmt: skip
def test_vote_key_groups_the_same_answer(a, b):
    assert vote_key(a) == vote_key(b)


def test_vote_key_separates_different_answers():
    keys = {vote_key(a) for a in ["1", "2", "-1", "1/3", "x", "x+1"]}
    assert len(keys) == 6
    assert vote_key(None) is None and vote_key("  ") is None


def test_scoring_imports_without_torch():
    """Loading problems and scoring records needs no model: rlserve.eval loads the runner
    (and torch) only when it is asked for."""
    code = "import sys, rlserve.eval; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
