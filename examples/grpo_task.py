"""The GRPO example's task: 2-digit subtractions whose result has one digit ("63 - 59").

The bundled model does 2-digit subtraction (about 70% right greedy), but gets those with a
one-digit result only about 20% right; RL has a signal to climb there (3-digit additions and
negative results start at 0%, which gives it none). The reward is 1 when the last number
of the reply is the difference: exact answer, no tools.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One subtraction `a - b` of two 2-digit numbers, 1 <= a - b <= 9."""

    a: int
    b: int

    @property
    def question(self) -> str:
        return f"What is {self.a} - {self.b}?"

    @property
    def answer(self) -> int:
        return self.a - self.b

    def messages(self) -> list[dict[str, str]]:
        """The chat the policy answers (no system prompt, no tools)."""
        return [{"role": "user", "content": self.question}]


def all_problems() -> list[Problem]:
    """Every such subtraction: 765 problems."""
    return [Problem(b + d, b) for d in range(1, 10) for b in range(10, 100 - d)]


def split_problems(num_held_out: int, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """(train pool, held-out set): disjoint, the same for every run with this `seed`."""
    problems = all_problems()
    if not 0 < num_held_out < len(problems):
        raise ValueError(f"num_held_out must be in 1..{len(problems) - 1}, got {num_held_out}")
    random.Random(seed).shuffle(problems)
    return problems[num_held_out:], problems[:num_held_out]


def final_number(text: str) -> int | None:
    """The last integer in `text` (the model replies "63 - 59 = 4"), None if there is none."""
    numbers = _INTEGER.findall(text)
    return int(numbers[-1]) if numbers else None


def reward(text: str, problem: Problem) -> float:
    """1.0 for the exact answer as the reply's last number, else 0.0."""
    return 1.0 if final_number(text) == problem.answer else 0.0
