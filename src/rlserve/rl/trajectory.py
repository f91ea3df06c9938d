"""A multi-turn trajectory: one token stream with loss mask, logprobs and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEGMENT_KINDS = ("model", "tool", "template")
NOT_SAMPLED = -1  # weight version of tokens the policy did not sample


@dataclass
class Segment:
    """`completion_ids[start:end]` all of one kind.

    `kind`: "model" (sampled by the policy; loss mask 1), "tool" (tool or code output) or
    "template" (chat-template tokens the loop inserted). `turn`: the generation round the
    segment came from or follows (0-based). `finish_reason`: how a model segment ended
    ("stop" | "length" | "abort"); None for inserted segments.
    """

    start: int
    end: int
    kind: str
    turn: int
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SEGMENT_KINDS:
            raise ValueError(f"segment kind must be one of {SEGMENT_KINDS}, got {self.kind!r}")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad segment span [{self.start}, {self.end})")

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class Trajectory:
    """Everything after the first prompt, as the trainer needs it.

    `completion_ids`, `logprobs`, `loss_mask` and `weight_versions` are aligned: mask 1 only
    for tokens the policy sampled (its stop tokens included); inserted tokens (tool output,
    template) have mask 0, logprob 0.0 and weight version -1. `messages` is the conversation
    in OpenAI shape (assistant `tool_calls`, `tool` messages with `tool_call_id`);
    `template_messages` is the same conversation as the loop rendered it, with each
    assistant `content` the exact sampled text (tool-call markup included), so rendering
    it reproduces the stream. `finish_reason`: "stop" (the model ended without a tool
    call), "length", "max_turns", "max_total_tokens", "abort" or "infra_error".
    `infra_error` marks trajectories that failed for reasons outside the policy (a tool
    executor crashed or timed out, the sandbox or server failed, the request was aborted,
    the first prompt did not fit): drop them rather than penalise; `error` says why.
    `template_exact` is False when some inserted tokens came from the fallback path (the
    template did not re-render the sampled history exactly; see `rlserve.rl.chat_turns`).
    `code_statuses` (TIR mode): the sandbox status of each code run whose result came back,
    in order ("completed", "error", "timeout", ..., "sandbox_error"; "no_code" for an end
    marker without code).
    """

    prompt_ids: list[int]
    messages: list[dict[str, Any]] = field(default_factory=list)
    template_messages: list[dict[str, Any]] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    weight_versions: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    finish_reason: str | None = None
    infra_error: bool = False
    error: str | None = None
    num_turns: int = 0
    template_exact: bool = True
    code_statuses: list[str] = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        """The whole stream: `prompt_ids + completion_ids`."""
        return self.prompt_ids + self.completion_ids

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add_sampled(
        self,
        token_ids: list[int],
        logprobs: list[float],
        weight_versions: list[int],
        turn: int,
        finish_reason: str | None,
    ) -> None:
        """Append tokens the policy sampled (loss mask 1)."""
        if not len(token_ids) == len(logprobs) == len(weight_versions):
            raise ValueError(
                f"{len(token_ids)} tokens but {len(logprobs)} logprobs and "
                f"{len(weight_versions)} weight versions"
            )
        start = len(self.completion_ids)
        self.completion_ids += token_ids
        self.logprobs += [float(lp) for lp in logprobs]
        self.loss_mask += [1] * len(token_ids)
        self.weight_versions += list(weight_versions)
        self.segments.append(Segment(start, len(self.completion_ids), "model", turn, finish_reason))

    def add_inserted(self, token_ids: list[int], kinds: list[str], turn: int) -> None:
        """Append tokens the loop inserted (loss mask 0); `kinds[i]` is "tool" or
        "template" for `token_ids[i]`; runs of one kind become one segment."""
        if len(kinds) != len(token_ids):
            raise ValueError(f"{len(token_ids)} tokens but {len(kinds)} kinds")
        for token, kind in zip(token_ids, kinds, strict=True):
            last = self.segments[-1] if self.segments else None
            end = len(self.completion_ids)
            if last is not None and last.kind == kind and last.end == end and last.turn == turn:
                last.end += 1
            else:
                self.segments.append(Segment(end, end + 1, kind, turn))
            self.completion_ids.append(token)
            self.logprobs.append(0.0)
            self.loss_mask.append(0)
            self.weight_versions.append(NOT_SAMPLED)

    def finish(self, reason: str, error: str | None = None, infra: bool = False) -> None:
        """End the trajectory (the first reason given wins)."""
        if self.finished:
            return
        self.finish_reason = reason
        self.error = error
        self.infra_error = infra

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (segments as dicts)."""
        return {
            "prompt_ids": self.prompt_ids,
            "completion_ids": self.completion_ids,
            "logprobs": self.logprobs,
            "loss_mask": self.loss_mask,
            "weight_versions": self.weight_versions,
            "segments": [vars(s).copy() for s in self.segments],
            "messages": self.messages,
            "template_messages": self.template_messages,
            "finish_reason": self.finish_reason,
            "infra_error": self.infra_error,
            "error": self.error,
            "num_turns": self.num_turns,
            "template_exact": self.template_exact,
            "code_statuses": self.code_statuses,
        }
