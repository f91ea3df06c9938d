"""One batch of evaluation samples through the rollout loop: prompts in, trajectories out.

Written once for `run_eval` and the seed-004 shape (`rlserve.eval.seed004`): k samples per
prompt, all generated together on one backend, plain completions or tool-integrated
reasoning (`rlserve.rl` TIR mode, code in the sandbox), watched by an `EvalWatch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlserve.backends import InferenceBackend, prompt_token_ids
from rlserve.eval.watch import EvalWatch
from rlserve.rl import TIRConfig, rollout_batch
from rlserve.rl.trajectory import Trajectory
from rlserve.sampling_params import SamplingParams
from rlserve.sandbox import Sandbox


@dataclass
class EvalPrompt:
    """A prompt as chat messages, or as text when it is sent as it is (`text` set: a model
    without a chat template, or a prompt rendered already)."""

    messages: list[dict[str, str]]
    text: str | None = None


@dataclass(frozen=True)
class BatchSettings:
    """How each sample is generated: `params` per generation round (its seed is the first
    sample's; sample j gets seed + j), `max_rounds` generation rounds per sample (TIR: code
    runs + 1), `tir` None for plain completions."""

    params: SamplingParams
    max_rounds: int = 1
    tir: TIRConfig | None = None


def run_batch(
    backend: InferenceBackend,
    prompts: list[EvalPrompt],
    k: int,
    settings: BatchSettings,
    watch: EvalWatch | None = None,
    sandbox: Sandbox | None = None,
) -> list[Trajectory]:
    """k trajectories per prompt (prompt i's are i*k .. i*k + k-1), generated together."""
    conversations = [p.messages for p in prompts for _ in range(k)]
    texts = [p.text for p in prompts for _ in range(k)]
    ids: list[list[int]] | None = None
    if any(t is not None for t in texts):
        ids = [prompt_ids_of(backend.tokenizer, p) for p in prompts for _ in range(k)]
    return rollout_batch(
        backend,
        conversations,
        None,
        None,
        settings.max_rounds,
        settings.params,
        tir=settings.tir,
        sandbox=sandbox,
        watch=watch,
        prompt_ids=ids,
    )


def prompt_ids_of(tokenizer: Any, prompt: EvalPrompt) -> list[int]:
    """The first prompt's token ids: the text tokenized as `Engine.generate` does, or the
    messages through the chat template (as the rollout loop renders them)."""
    if prompt.text is None:  # mixed with text prompts: render these messages the same way
        from rlserve.rl.chat_turns import first_prompt_ids

        return first_prompt_ids(tokenizer, prompt.messages, None)
    return prompt_token_ids(tokenizer, prompt.text)


def completion_text(tokenizer: Any, traj: Trajectory) -> str:
    """What the sample wrote (code output blocks included), special tokens skipped."""
    return tokenizer.decode(traj.completion_ids, skip_special_tokens=True)


def sampled_tokens(traj: Trajectory) -> int:
    """How many tokens the policy sampled (code output and template tokens not counted)."""
    return sum(traj.loss_mask)
