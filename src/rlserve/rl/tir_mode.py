"""The TIR rollout mode: generate until the end marker, run the code, append its output,
and continue the same assistant turn (no chat-template turn boundary)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rlserve.backends.base import Sample
from rlserve.rl.chat_turns import Insert
from rlserve.rl.modes import Continuation, sampled_text
from rlserve.rl.tir import (
    TIRConfig,
    code_to_run,
    extract_code,
    format_output,
    missing_code_message,
    output_block,
)
from rlserve.rl.tokens import decode, encode, encode_with_offsets, label_tokens
from rlserve.rl.trajectory import Trajectory
from rlserve.sampling_params import SamplingParams
from rlserve.sandbox import Sandbox


@dataclass
class CodeRun:
    """The model's code (None: it wrote the end marker without a begin marker)."""

    code: str | None


@dataclass
class CodeOutput:
    """What the run printed, formatted for the model; or why the sandbox failed.
    `status`: the sandbox's (`rlserve.sandbox.STATUSES`), or "no_code"."""

    text: str = ""
    infra_error: str | None = None
    status: str = "completed"


class TIRMode:
    """One assistant turn interleaving generation and sandboxed code runs. The end
    marker stops generation as a stop string, and also as a stop token id when it is one
    token: a model may spell it either way. A round that stopped with text ending in the
    marker counts too, whatever stop reason the backend gave."""

    def __init__(self, tokenizer: Any, config: TIRConfig, sandbox: Sandbox) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.sandbox = sandbox
        end_ids = encode(tokenizer, config.end)
        self.end_id = end_ids[0] if len(end_ids) == 1 else None
        self.special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()))

    def turn_params(self, params: SamplingParams) -> SamplingParams:
        stop_ids = list(params.stop_token_ids)
        if self.end_id is not None and self.end_id not in stop_ids:
            stop_ids.append(self.end_id)
        stop = list(params.stop)
        if self.config.end not in stop:
            stop.append(self.config.end)
        # The rounds are read from token ids, which cover a matched stop string anyway;
        # only a marker that is no single token is asked to stay in the text as well, as
        # it always was, and the caller's own stop strings keep the caller's setting.
        keep_stop = params.include_stop_str_in_output or self.end_id is None
        return replace(
            params, stop=stop, stop_token_ids=stop_ids, include_stop_str_in_output=keep_stop
        )

    def after_generation(self, traj: Trajectory, sample: Sample) -> CodeRun | None:
        text = sampled_text(self.tokenizer, sample, keep_last=True)
        at_marker = self._stopped_at_marker(sample, text)
        if not at_marker and sample.ends_with_stop_token:
            text = self._without_last_token(sample.token_ids, text)
        if traj.num_turns == 1:  # the first round opens the assistant turn
            traj.messages.append({"role": "assistant", "content": ""})
            traj.template_messages.append({"role": "assistant", "content": ""})
        traj.messages[-1]["content"] += text
        traj.template_messages[-1]["content"] += text
        return CodeRun(extract_code(text, self.config)) if at_marker else None

    def execute(self, plan: CodeRun) -> CodeOutput:
        if plan.code is None:
            return CodeOutput(missing_code_message(self.config), status="no_code")
        result = self.sandbox.run(
            code_to_run(plan.code, self.config), timeout=self.config.timeout_s
        )
        if result.status == "sandbox_error":
            return CodeOutput(
                infra_error=f"sandbox error: {result.stderr.strip()}", status=result.status
            )
        return CodeOutput(format_output(result, self.config), status=result.status)

    def continuation(self, traj: Trajectory, plan: CodeRun, outcome: CodeOutput) -> Continuation:
        traj.code_statuses.append(outcome.status)
        if outcome.infra_error is not None:
            return Continuation(infra_error=outcome.infra_error)
        block = output_block(outcome.text)
        # The block follows the end marker, a token boundary, so tokenising it alone
        # matches its in-context tokenisation whenever the marker is a single token.
        ids, offsets = encode_with_offsets(self.tokenizer, block)
        kinds = label_tokens(block, offsets, len(ids), [outcome.text])
        return Continuation(Insert(ids, kinds), text=block)

    def accept(self, traj: Trajectory, cont: Continuation) -> None:
        traj.messages[-1]["content"] += cont.text
        traj.template_messages[-1]["content"] += cont.text

    def _stopped_at_marker(self, sample: Sample, text: str) -> bool:
        """`text`: every sampled token decoded, the last one included."""
        if sample.finish_reason != "stop":
            return False
        if sample.stop_reason is not None and sample.stop_reason in (self.config.end, self.end_id):
            return True
        # The backend stopped without naming the marker (a server that reports no stop
        # reason), or the marker came as ordinary tokens that end the text.
        return text.endswith(self.config.end)

    def _without_last_token(self, token_ids: list[int], text: str) -> str:
        """`text` (all of `token_ids` decoded) without the last token's text. A special
        token (EOS, end of turn) decodes alone to exactly the text it ends `text` with;
        other tokens may not (byte pieces, leading-space rules), so then the rest is
        decoded again."""
        last = token_ids[-1]
        if last in self.special_ids:
            piece = decode(self.tokenizer, [last])
            if piece and text.endswith(piece):
                return text[: len(text) - len(piece)]
        return decode(self.tokenizer, token_ids[:-1])
