"""`SampleRecord`: everything about one sample of one problem, one JSONL line each."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rlserve._checks import ParamError, check_int

ERROR_KINDS = ("timeout", "sandbox_error", "infra_error")


@dataclass
class SampleRecord:
    """One sample. `prompt_ids` / `completion_ids` are the exact tokens (a TIR completion
    includes the appended code output, whose logprobs are 0.0); `answer` is what
    `extract_answer` found in `text`; `error_kind` is None, "timeout" (problem or run
    budget, or a sandbox timeout), "sandbox_error" or "infra_error"; `stopped_early` marks a
    sample cancelled by early stopping (it has no answer and is not scored), with
    `tokens_saved` the runner's estimate of what it would have generated."""

    problem_id: str
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    text: str
    answer: str | None
    correct: bool
    finish_reason: str | None
    num_tool_calls: int
    error_kind: str | None
    stopped_early: bool
    num_tokens: int
    tokens_saved: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.problem_id, str):
            raise ParamError("problem_id", f"problem_id must be a string, got {self.problem_id!r}")
        for name in ("sample_index", "num_tool_calls", "num_tokens", "tokens_saved"):
            check_int(name, getattr(self, name), minimum=0)
        if self.error_kind is not None and self.error_kind not in ERROR_KINDS:
            raise ParamError(
                "error_kind",
                f"error_kind must be None or one of {', '.join(ERROR_KINDS)}, "
                f"got {self.error_kind!r}",
            )
        if len(self.logprobs) != len(self.completion_ids):
            raise ParamError(
                "logprobs",
                f"logprobs ({len(self.logprobs)}) and completion_ids "
                f"({len(self.completion_ids)}) must have the same length",
            )

    @property
    def scored(self) -> bool:
        """Whether the sample counts in the scores: it was not cancelled by early stopping."""
        return not self.stopped_early


def write_jsonl(records: Iterable[SampleRecord], path: str | Path) -> Path:
    """Write one JSON object per record to `path` (parents created); returns the path."""
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for record in records:
            if not isinstance(record, SampleRecord):
                raise ParamError("records", f"records must be SampleRecords, got {record!r:.60}")
            f.write(json.dumps(asdict(record)) + "\n")
    return out


def read_jsonl(path: str | Path) -> list[SampleRecord]:
    """The records `write_jsonl` wrote; a bad line is a ValueError naming `file:line`."""
    file = Path(path).expanduser()
    names = {f.name for f in fields(SampleRecord)}
    records = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            unknown = sorted(set(data) - names)
            if unknown:
                raise ValueError(f"unknown field {unknown[0]!r}")
            records.append(SampleRecord(**data))
        except (ValueError, TypeError) as e:
            raise ParamError("path", f"{file}:{number}: not a sample record: {e}") from e
    return records
