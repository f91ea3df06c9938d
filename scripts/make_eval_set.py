"""Write the bundled evaluation set, src/rlserve/assets/eval/arithmetic.jsonl:
deterministic synthetic arithmetic problems in GSM8K's format (`question`, and `answer`
ending in `#### N`), some as short word problems.

The bundled model (src/rlserve/assets/README.md) reads only questions that state the
expression, so every word problem ends by asking for it. The mix of kinds is chosen so
that its greedy accuracy sits near one half: it is right on 2-digit additions and small
products, often wrong on subtractions and 1-digit x 2-digit products, and wrong on
3-digit sums and 2-digit x 2-digit products (it learned to hand those to a calculator).

    python scripts/make_eval_set.py [--n 300] [--seed 14] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "rlserve" / "assets" / "eval" / "arithmetic.jsonl"

# kind: (weight, first operand range, operator, second operand range)
KINDS: dict[str, tuple[int, tuple[int, int], str, tuple[int, int]]] = {
    "add2": (25, (10, 99), "+", (10, 99)),
    "add1": (5, (0, 9), "+", (10, 99)),
    "sub2": (20, (10, 99), "-", (0, 99)),
    "mul1": (5, (2, 9), "*", (2, 9)),
    "mul12": (20, (2, 9), "*", (10, 99)),
    "add3": (10, (100, 999), "+", (100, 999)),
    "sub3": (5, (100, 999), "-", (10, 999)),
    "mul22": (10, (10, 99), "*", (10, 99)),
}
QUESTION_FORMS = [
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "How much is {e}?",
    "Work out {e}.",
    "Evaluate {e}.",
]
STORIES = {
    "+": [
        "Ann has {a} stickers and gets {b} more.",
        "A shelf holds {a} books and another holds {b}.",
        "A farm has {a} hens and buys {b} more.",
    ],
    "-": [
        "Sam had {a} marbles and gave away {b}.",
        "A tank held {a} litres and {b} litres leaked out.",
        "A class printed {a} pages and used {b} of them.",
    ],
    "*": [
        "There are {a} boxes with {b} pens in each.",
        "A hall has {a} rows of {b} seats.",
        "Each of {a} buses carries {b} people.",
    ],
}
STORY_SHARE = 0.5


@dataclass(frozen=True)
class Item:
    kind: str
    a: int
    op: str
    b: int

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def result(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]


def sample_item(rng: random.Random) -> Item:
    names = list(KINDS)
    kind = rng.choices(names, weights=[KINDS[n][0] for n in names])[0]
    _, (lo_a, hi_a), op, (lo_b, hi_b) = KINDS[kind]
    a, b = rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)
    if op == "-":
        a, b = max(a, b), min(a, b)  # results stay non-negative, as in the model's training
    return Item(kind, a, op, b)


def question(item: Item, rng: random.Random) -> str:
    ask = rng.choice(QUESTION_FORMS).format(e=item.expression)
    if rng.random() >= STORY_SHARE:
        return ask
    return f"{rng.choice(STORIES[item.op]).format(a=item.a, b=item.b)} {ask}"


def make_set(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n:
        item = sample_item(rng)
        if item.expression in seen:
            continue
        seen.add(item.expression)
        rows.append(
            {
                "id": f"arith-{len(rows):03d}",
                "question": question(item, rng),
                "answer": f"{item.expression} = {item.result}\n#### {item.result}",
                "kind": item.kind,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = make_set(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} problems to {args.out}")


if __name__ == "__main__":
    main()
