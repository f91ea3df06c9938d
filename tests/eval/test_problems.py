"""Loading problems: GSM8K and MATH lines, custom fields, the bundled set, and bad files
refused with errors naming file:line and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlserve.eval import BUNDLED_PROBLEMS, Problem, load_problems

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, *rows) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


GSM8K_LINE = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
MATH_LINE = {
    "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
    "solution": "We add: $\\frac{1}{2} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.",
    "unique_id": "test/algebra/1.json",
}


def test_gsm8k_lines(tmp_path):
    problems = load_problems(write(tmp_path / "g.jsonl", GSM8K_LINE, {**GSM8K_LINE, "id": "b"}))
    assert problems == [
        Problem("0", GSM8K_LINE["question"], "72"),
        Problem("b", problems[1].question, "72"),
    ]


def test_math_lines_with_solution_or_answer(tmp_path):
    with_answer = {"problem": "2+2?", "answer": "\\frac{8}{2}", "id": 7}
    problems = load_problems(write(tmp_path / "m.jsonl", MATH_LINE, with_answer))
    assert problems[0] == Problem("test/algebra/1.json", MATH_LINE["problem"], "\\frac{3}{4}")
    assert problems[1] == Problem("7", "2+2?", "\\frac{8}{2}")


def test_custom_fields_numbers_blank_lines_and_limit(tmp_path):
    path = write(tmp_path / "c.jsonl", {"q": "one?", "gold": 1}, "", {"q": "two?", "gold": 2.5},
                 {"q": "three?", "gold": "3"})  # fmt: skip
    problems = load_problems(str(path), question_field="q", answer_field="gold", limit=2)
    assert [(p.question, p.answer) for p in problems] == [("one?", "1"), ("two?", "2.5")]


def test_the_bundled_set():
    problems = load_problems()
    assert len(problems) == 300
    assert len({p.id for p in problems}) == 300
    assert all(p.answer.lstrip("-").isdigit() for p in problems)
    first = json.loads(BUNDLED_PROBLEMS.read_text().splitlines()[0])
    assert problems[0] == Problem(first["id"], first["question"], first["answer"].split("#### ")[1])
    assert len(load_problems(limit=10)) == 10


def test_the_bundled_set_is_what_the_script_writes(tmp_path):
    out = tmp_path / "set.jsonl"
    script = ROOT / "scripts" / "make_eval_set.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(out)], check=True, capture_output=True
    )
    assert out.read_bytes() == BUNDLED_PROBLEMS.read_bytes()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"answer": "1"}, "no field 'question' or 'problem'"),
        ({"question": "q"}, "no field 'answer' or 'solution'"),
        ({"question": "", "answer": "1"}, "field 'question' must be non-empty text"),
        ({"question": "q", "answer": ["1"]}, "field 'answer' must be text or a number"),
        ({"question": "q", "answer": "the answer is\n#### "}, "field 'answer' states no final"),
        ({"problem": "q", "solution": "no box here"}, "field 'solution' states no final"),
        ({"question": "q", "answer": "1", "id": "0"}, "duplicate problem id '0'"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", {"question": "fine", "answer": "1"}, line)
    with pytest.raises(ValueError, match=message) as info:
        load_problems(path)
    assert f"{path}:2" in str(info.value)


def test_a_chosen_field_that_is_missing(tmp_path):
    path = write(tmp_path / "p.jsonl", GSM8K_LINE)
    with pytest.raises(ValueError, match=r"p.jsonl:1: no field 'prompt' \(set question_field"):
        load_problems(path, question_field="prompt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/nonexistent/problems.jsonl"}, "cannot read problems file"),
        ({"limit": 0}, "limit must be a positive integer"),
        ({"limit": True}, "limit must be a positive integer"),
        ({"question_field": ""}, "question_field must be a non-empty string"),
        ({"answer_field": 3}, "answer_field must be a non-empty string"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_problems(**kwargs)


def test_an_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no problems"):
        load_problems(path)
