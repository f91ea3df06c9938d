"""eval layer (see docs/ARCHITECTURE.md): math evaluation on any backend.

`load_problems` reads GSM8K / MATH style JSONL (or the bundled arithmetic set), `run_eval`
samples k completions a problem (optionally with tool-integrated reasoning in the
sandbox, time budgets and early stopping) into `SampleRecord`s, and `summarize` scores
them (accuracy, maj@k, pass@k, tokens, tool calls, errors by kind) with answers compared
by `math-verify`. `rlserve eval` is the command line. The runner and the seed-004 shape
load on first use: scoring needs neither torch nor a model.
"""

from __future__ import annotations

from typing import Any

from rlserve.eval.answers import answers_equal, extract_answer, vote_key
from rlserve.eval.metrics import EvalSummary, summarize
from rlserve.eval.problems import BUNDLED_PROBLEMS, Problem, load_problems
from rlserve.eval.records import ERROR_KINDS, SampleRecord, read_jsonl, write_jsonl

_LAZY = {
    "EvalConfig": "rlserve.eval.runner",
    "run_eval": "rlserve.eval.runner",
    "get_code_execution_model": "rlserve.eval.seed004",
    "print_summary": "rlserve.eval.report",
    "plot": "rlserve.eval.report",
}

__all__ = [
    "BUNDLED_PROBLEMS",
    "ERROR_KINDS",
    "EvalConfig",
    "EvalSummary",
    "Problem",
    "SampleRecord",
    "answers_equal",
    "extract_answer",
    "get_code_execution_model",
    "load_problems",
    "plot",
    "print_summary",
    "read_jsonl",
    "run_eval",
    "summarize",
    "vote_key",
    "write_jsonl",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
