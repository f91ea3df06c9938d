"""Rollout test helpers: a scripted policy in place of a model, and the checks every
trajectory must pass (shared by test_rollout.py and test_tir.py)."""

from __future__ import annotations

from collections.abc import Callable

from rlserve.rl import Sample, Trajectory

# The bundled model's calculator question (it answers 347 * 29 with a calculator call).
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 347 * 29?"},
]


class ScriptedPolicy:
    """A TokenGenerator whose replies come from `reply(prompt_text)`; appends `end` (the
    end-of-turn token) unless a stop token id of the request comes first. Records the
    size of every generation round."""

    def __init__(
        self,
        tokenizer,
        reply: Callable[[str], str],
        end: str = "<|im_end|>",
        split_chars: bool = False,
        max_model_len: int = 1024,
    ) -> None:
        self.tokenizer = tokenizer
        self.reply = reply
        self.end_id = tokenizer.convert_tokens_to_ids(end)
        self.split_chars = split_chars  # sample a non-canonical tokenisation
        self.max_model_len = max_model_len
        self.rounds: list[int] = []
        self.seeds: list[list[int | None]] = []

    def generate(self, requests, on_done) -> None:
        self.rounds.append(len(requests))
        self.seeds.append([params.seed for _, params in requests])
        for k, (prompt, params) in enumerate(requests):
            text = self.reply(self.tokenizer.decode(prompt))
            ids = self._encode(text) + [self.end_id]
            finish, stop_reason = "stop", None
            for i, token in enumerate(ids):
                if token in params.stop_token_ids:
                    ids, stop_reason = ids[: i + 1], token
                    break
            if len(ids) > params.max_tokens:
                ids, finish, stop_reason = ids[: params.max_tokens], "length", None
            on_done(k, Sample(ids, [-0.5] * len(ids), [3] * len(ids), finish, stop_reason))

    def _encode(self, text: str) -> list[int]:
        if not self.split_chars:
            return self.tokenizer.encode(text, add_special_tokens=False)
        return [t for ch in text for t in self.tokenizer.encode(ch, add_special_tokens=False)]


def rendered_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def check_consistent(traj: Trajectory) -> None:
    """Aligned lists, segments tiling the completion, mask/logprob/version rules."""
    n = len(traj.completion_ids)
    assert len(traj.logprobs) == len(traj.loss_mask) == len(traj.weight_versions) == n
    assert traj.segments[0].start == 0 and traj.segments[-1].end == n
    for a, b in zip(traj.segments, traj.segments[1:], strict=False):
        assert a.end == b.start
    for seg in traj.segments:
        mask = traj.loss_mask[seg.start : seg.end]
        assert mask == [1 if seg.kind == "model" else 0] * len(seg)
        if seg.kind != "model":
            assert traj.logprobs[seg.start : seg.end] == [0.0] * len(seg)
            assert traj.weight_versions[seg.start : seg.end] == [-1] * len(seg)


def assert_matches_fresh_render(
    tokenizer, traj: Trajectory, messages: list[dict], tools: list[dict] | None
) -> None:
    """The stream equals a fresh render of `messages`, except the newline the template
    writes after the final <|im_end|> (the policy stopped at <|im_end|>)."""
    fresh = rendered_ids(tokenizer, messages, tools)
    stream = traj.token_ids
    assert fresh[: len(stream)] == stream
    assert tokenizer.decode(fresh[len(stream) :]) == "\n"
