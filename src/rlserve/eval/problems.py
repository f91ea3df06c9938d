"""Evaluation problems from JSONL: GSM8K (`question`, `answer` ending in `#### N`), MATH
(`problem`, `answer`, or `solution` with `\\boxed{}`), or any fields named by the caller.
Without a path, the bundled arithmetic set (scripts/make_eval_set.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlserve._checks import ParamError, check_positive_int
from rlserve.eval.answers import last_boxed

BUNDLED_PROBLEMS = Path(__file__).resolve().parents[1] / "assets" / "eval" / "arithmetic.jsonl"
QUESTION_FIELDS = ("question", "problem")
ANSWER_FIELDS = ("answer", "solution")
ID_FIELDS = ("id", "unique_id", "idx")


@dataclass(frozen=True)
class Problem:
    """One problem: `answer` is the gold final answer alone (e.g. "18", "\\frac{1}{2}")."""

    id: str
    question: str
    answer: str


def load_problems(
    path: str | Path | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """The problems of JSONL file `path` (None: the bundled set), in file order, at most
    `limit`. Fields default to the first present of `question`/`problem` and
    `answer`/`solution`; a gold answer is reduced to its final answer (`#### N` -> "N",
    the last `\\boxed{...}`). A bad line is a ValueError naming `file:line` and the field."""
    file = BUNDLED_PROBLEMS if path is None else Path(path).expanduser()
    if limit is not None:
        check_positive_int("limit", limit)
    for name, value in (("question_field", question_field), ("answer_field", answer_field)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ParamError(name, f"{name} must be a non-empty string or None, got {value!r}")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ParamError("path", f"cannot read problems file {file}: {e}") from e
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if limit is not None and len(problems) == limit:
            break
        if not line.strip():
            continue
        where = f"{file}:{number}"
        problem = _problem(_record(line, where), where, question_field, answer_field, len(problems))
        if problem.id in seen:
            raise ParamError("id", f"{where}: duplicate problem id {problem.id!r}")
        seen.add(problem.id)
        problems.append(problem)
    if not problems:
        raise ParamError("path", f"problems file {file} holds no problems")
    return problems


def gold_answer(value: str) -> str | None:
    """The final answer of a gold field: the last `\\boxed{...}`, else what follows
    `####`, else the whole text; None when that is empty."""
    boxed = last_boxed(value)
    if boxed is not None:
        return boxed or None
    if "####" in value:
        return value.rsplit("####", 1)[1].strip() or None
    return value.strip() or None


def _record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ParamError("path", f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(record, dict):
        raise ParamError("path", f"{where}: a problem must be a JSON object")
    return record


def _problem(
    record: dict, where: str, question_field: str | None, answer_field: str | None, index: int
) -> Problem:
    q_name = _field(record, where, question_field, QUESTION_FIELDS, "question_field")
    a_name = _field(record, where, answer_field, ANSWER_FIELDS, "answer_field")
    question = record[q_name]
    if not isinstance(question, str) or not question.strip():
        raise ParamError("question_field", f"{where}: field {q_name!r} must be non-empty text")
    gold = record[a_name]
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(gold, str):
        raise ParamError("answer_field", f"{where}: field {a_name!r} must be text or a number")
    answer = gold_answer(gold)
    if answer is None or (a_name == "solution" and last_boxed(gold) is None):
        raise ParamError("answer_field", f"{where}: field {a_name!r} states no final answer")
    return Problem(_problem_id(record, index), question, answer)


def _field(
    record: dict, where: str, chosen: str | None, defaults: tuple[str, ...], option: str
) -> str:
    names = (chosen,) if chosen is not None else defaults
    found = next((name for name in names if name in record), None)
    if found is None:
        tried = " or ".join(repr(n) for n in names)
        raise ParamError(option, f"{where}: no field {tried} (set {option} to the field's name)")
    return found


def _problem_id(record: dict, index: int) -> str:
    for name in ID_FIELDS:
        value = record.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return str(index)
