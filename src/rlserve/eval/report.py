"""What a person sees of an evaluation: the summary table (rich) and the PNG (matplotlib,
the optional `plot` extra): accuracy vs k, and the answer-length histogram."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from rlserve._checks import ParamError, check_positive_int
from rlserve.eval.metrics import EvalSummary, group_by_problem, summarize
from rlserve.eval.records import SampleRecord


def summary_rows(summary: EvalSummary, wall_s: float | None = None) -> list[tuple[str, str]]:
    """(label, value) rows of the table, in order."""
    k = summary.k
    errors = summary.errors
    rows = [
        ("problems", str(summary.num_problems)),
        ("samples (scored)", f"{summary.num_samples} ({summary.num_scored})"),
        ("accuracy", f"{summary.accuracy:.3f}"),
        (f"maj@{k}", f"{summary.maj_at_k:.3f}"),
        (f"pass@{k}", f"{summary.pass_at_k:.3f}"),
        ("mean tokens", f"{summary.mean_tokens:.1f}"),
        ("tool calls (mean)", f"{summary.num_tool_calls} ({summary.mean_tool_calls:.2f})"),
        (
            "errors: timeout / sandbox / infra",
            f"{errors['timeout']} / {errors['sandbox_error']} / {errors['infra_error']}",
        ),
        ("stopped early (tokens saved)", f"{summary.stopped_early} ({summary.tokens_saved})"),
    ]
    if wall_s is not None:
        rows.append(("wall time", f"{wall_s:.1f} s"))
    return rows


def print_summary(
    summary: EvalSummary, file: IO[str] | None = None, wall_s: float | None = None
) -> None:
    """Print the summary as a table to `file` (default: stdout)."""
    from rich.console import Console
    from rich.table import Table

    if not isinstance(summary, EvalSummary):
        raise ParamError("summary", f"summary must be an EvalSummary, got {summary!r:.60}")
    table = Table(title="rlserve eval", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for label, value in summary_rows(summary, wall_s):
        table.add_row(label, value)
    Console(file=file, width=80).print(table)


def plot(records: list[SampleRecord], path: str | Path, k: int | None = None) -> Path:
    """Write a PNG: maj@j and pass@j for j = 1..k (default: the most samples any problem
    has) next to the sample accuracy, and a histogram of completion lengths, correct and
    wrong apart. Needs matplotlib (`pip install rlserve[plot]`)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot needs matplotlib: pip install 'rlserve[plot]'") from e
    if not records:
        raise ParamError("records", "there are no records to plot")
    if k is None:
        k = max(len(samples) for samples in group_by_problem(records).values())
    check_positive_int("k", k)
    summary = summarize(records, k)
    fig = Figure(figsize=(10, 4), layout="constrained")
    curve, hist = fig.subplots(1, 2)
    js = list(summary.maj_at)
    curve.plot(js, [summary.maj_at[j] for j in js], marker="o", label="maj@k")
    curve.plot(js, [summary.pass_at[j] for j in js], marker="s", label="pass@k")
    curve.axhline(summary.accuracy, color="gray", linestyle="--", label="sample accuracy")
    curve.set(xlabel="k", ylabel="accuracy", ylim=(0, 1.05), title="accuracy vs k")
    curve.set_xticks(js)
    curve.legend()
    scored = [r for r in records if r.scored]
    right = [r.num_tokens for r in scored if r.correct]
    wrong = [r.num_tokens for r in scored if not r.correct]
    hist.hist([right, wrong], bins=20, stacked=True, label=["correct", "wrong"])
    hist.set(xlabel="completion tokens", ylabel="samples", title="answer length")
    hist.legend()
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
