"""Answers: extraction from a completion, equivalence with `math-verify`, and the key
majority voting groups answers by.

Only extraction is written here; whether two answers are the same mathematical object is
decided by Hugging Face's `math-verify` (`parse` + `verify`), after an exact-string check.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_HASHES = re.compile(r"####\s*([^\n]*)")
# A number; the minus is a sign only where it cannot be a subtraction (not after a digit,
# letter, dot or closing bracket).
_NUMBER = re.compile(r"(?:(?<![\w.)\]}])-)?\d+(?:,\d{3})*(?:\.\d+)?")
_FRAC = re.compile(r"^\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_PLAIN_NUMBER = re.compile(r"^-?\d+(?:,\d{3})*(?:\.\d+)?$|^-?\.\d+$")
_SPACE = re.compile(r"\s+")
_MATH_VERIFY_TIMEOUT_S = 5


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces
    included; None when there is none or it is never closed."""
    start = max(text.rfind(opener) for opener in _BOX_OPENERS)
    if start < 0:
        return None
    begin = text.index("{", start) + 1
    depth = 1
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The answer `text` states: the last `\\boxed{...}`, else what follows the last
    `#### `, else the last number in the text; None when there is none."""
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def answers_equal(predicted: str | None, gold: str) -> bool:
    """Whether `predicted` is the same answer as `gold`: the same string, else
    `math_verify.verify(parse(gold), parse(predicted))`. Never raises: anything
    math-verify cannot parse or compare is not equal."""
    if not isinstance(predicted, str) or not isinstance(gold, str):
        return False
    predicted, gold = predicted.strip(), gold.strip()
    if not predicted or not gold:
        return False
    if predicted == gold:
        return True
    try:
        return _math_verify(predicted, gold)
    except Exception:  # noqa: BLE001 (a grader must not fail a run on an odd answer)
        return False


def vote_key(answer: str | None) -> str | None:
    """A canonical form of `answer` for majority voting: numbers (with thousands
    separators, decimals or `a/b` / `\\frac{a}{b}`) become their exact fraction, so
    "1,000", "1000" and "1000.0" vote together; other answers are compared with
    whitespace, `$` and `\\left` / `\\right` removed."""
    if not isinstance(answer, str):
        return None
    text = _SPACE.sub("", answer).strip("$").replace("\\left", "").replace("\\right", "")
    if not text:
        return None
    number = _as_fraction(text)
    return str(number) if number is not None else text.replace("\\dfrac", "\\frac")


def _as_fraction(text: str) -> Fraction | None:
    if _PLAIN_NUMBER.match(text):
        return Fraction(text.replace(",", ""))
    frac = _FRAC.match(text)
    if frac is None and text.count("/") == 1:
        top, bottom = text.split("/")
        if _PLAIN_NUMBER.match(top) and _PLAIN_NUMBER.match(bottom):
            return _ratio(top, bottom)
        return None
    return _ratio(frac.group(1), frac.group(2)) if frac else None


def _ratio(top: str, bottom: str) -> Fraction | None:
    denominator = Fraction(bottom.replace(",", ""))
    return Fraction(top.replace(",", "")) / denominator if denominator else None


def _math_verify(predicted: str, gold: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only the main thread may set; in
    # other threads it runs without one (answers here are short).
    main = threading.current_thread() is threading.main_thread()
    limit = _MATH_VERIFY_TIMEOUT_S if main else None
    parsed_gold = parse(_as_latex(gold), parsing_timeout=limit)
    parsed = parse(_as_latex(predicted), parsing_timeout=limit)
    if not parsed_gold or not parsed:
        return False
    return bool(verify(parsed_gold, parsed, timeout_seconds=limit))


def _as_latex(answer: str) -> str:
    """`answer` in math delimiters, so math-verify reads it as LaTeX (`\\dfrac`, `\\sqrt`,
    sets) as well as a plain expression."""
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"
