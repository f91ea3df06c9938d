"""Step-failure isolation: when a batched call raises, find the items that fail on their own.

A forward pass or a sampling call over many sequences can raise because of one of them (an
input that slipped past admission) or because of the batch as a whole (out of memory, a
device hiccup). The batch is then run in halves, and halves of the halves that raise: the
groups that run keep their results, and only an item that raises on its own fails. So a
culprit costs about 2 log2(n) extra runs rather than n, and a batch that only fails whole
fails nobody: it is done in pieces in the same step (no retry loop to bound).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_isolating(
    items: list[T], run: Callable[[list[T]], R]
) -> tuple[list[tuple[list[T], R]], list[tuple[T, Exception]]]:
    """`run(items)`, splitting in halves whatever raises. Returns the groups that ran with
    their results (in item order) and the items that raised alone with their errors."""
    done: list[tuple[list[T], R]] = []
    culprits: list[tuple[T, Exception]] = []
    todo = [items]
    while todo:
        group = todo.pop()
        try:
            done.append((group, run(group)))
        except Exception as exc:
            if len(group) == 1:
                culprits.append((group[0], exc))
            else:
                middle = len(group) // 2
                todo += [group[middle:], group[:middle]]  # the first half is popped first
    return done, culprits
