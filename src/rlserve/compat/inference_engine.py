"""Seed 003's `InferenceEngine`: a VERL-style config in, `GenerationOutput` out.

    engine = InferenceEngine("config.yaml")
    output = engine.generate("What is 2 + 2?")
    print(output.completions[0])

Every prompt is a conversation: a string is one user message, rendered (like message
lists) by the tokenizer's chat template. `rollout.name` picks the `rlserve.backends`
backend; with `rollout.multi_turn.enable` the tools of `tool_config_path` are offered and
executed (see `rlserve.compat.multi_turn`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rlserve._checks import ParamError, check_int
from rlserve.backends import complete, prompt_token_ids
from rlserve.compat.config_file import ConfigSource, load_engine_config
from rlserve.compat.engine_backend import build_backend
from rlserve.compat.engine_config import InferenceEngineConfig
from rlserve.compat.generation_output import GenerationOutput, Response, collect
from rlserve.compat.multi_turn import MultiTurnRunner
from rlserve.compat.tool_config import ToolSet, load_tool_set
from rlserve.rl.chat_turns import first_prompt_ids
from rlserve.sampling_params import SamplingParams

Conversation = list[dict[str, Any]]


class InferenceEngine:
    """Generation on the backend that `config` (a YAML path, a dict or a DictConfig) names.

    `generate` takes a string, a list of strings or a list of conversations; sampling
    arguments left None take the config's `rollout` values. `shutdown()` (or leaving a
    `with` block) releases the model, the server client and the tools; it is idempotent.
    """

    def __init__(self, config: ConfigSource = "config.yaml") -> None:
        self.config: InferenceEngineConfig = load_engine_config(config)
        self.tools = self._load_tools()  # before the model: a bad tools.yaml fails fast
        try:
            self.backend = build_backend(self.config)
        except BaseException:
            self.tools.close()
            raise
        self.tokenizer = self.backend.tokenizer
        self._runner = MultiTurnRunner(self.backend, self.tools, self.config)
        self._closed = False

    def generate(
        self,
        prompts: str | list[str] | list[Conversation],
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        max_tokens: int | None = None,
        do_sample: bool | None = None,
        *,
        seed: int | None = None,
    ) -> GenerationOutput:
        """Completions of every prompt (`rollout.n` each). `do_sample=False` or
        `temperature=0` is greedy (one completion per prompt, as in VERL). `max_tokens`
        (default and cap: `rollout.response_length`) limits each generation. `seed` (an
        rlserve addition) makes sampling reproducible."""
        if self._closed:
            raise RuntimeError("the InferenceEngine is shut down; create a new one")
        conversations = _conversations(prompts)
        params = self._params(temperature, top_p, top_k, max_tokens, do_sample, seed)
        responses: list[Response] = []
        step = self.config.rollout.batch_size or len(conversations)
        prompt_ids = [self._prompt_ids(i, c) for i, c in enumerate(conversations)]
        for start in range(0, len(conversations), step):
            chunk = slice(start, start + step)
            responses += self._generate(conversations[chunk], prompt_ids[chunk], params)
        return collect(self.tokenizer, responses, self.config.rollout.response_length)

    def shutdown(self) -> None:
        """Release the backend and the tools (a sandbox, tool instances). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.tools.close()
        finally:
            close = getattr(self.backend, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def multi_turn(self) -> bool:
        return self.config.rollout.multi_turn.enable

    def _load_tools(self) -> ToolSet:
        options = self.config.rollout.multi_turn
        if not options.enable or options.tool_config_path is None:
            return ToolSet()
        path = _resolve(options.tool_config_path, self.config.base_dir)
        return load_tool_set(
            path, options.max_tool_response_length, options.tool_response_truncate_side
        )

    def _params(
        self,
        temperature: float | None,
        top_p: float | None,
        top_k: int | None,
        max_tokens: int | None,
        do_sample: bool | None,
        seed: int | None,
    ) -> SamplingParams:
        rollout = self.config.rollout
        if do_sample is not None and not isinstance(do_sample, bool):
            raise ParamError("do_sample", f"do_sample must be a bool, got {do_sample!r}")
        if max_tokens is not None:
            check_int("max_tokens", max_tokens, minimum=1, maximum=rollout.response_length)
        params = SamplingParams(
            n=rollout.n,
            temperature=rollout.temperature if temperature is None else temperature,
            top_p=rollout.top_p if top_p is None else top_p,
            top_k=rollout.top_k if top_k is None else top_k,
            max_tokens=rollout.response_length if max_tokens is None else max_tokens,
            ignore_eos=rollout.ignore_eos,
            seed=seed,
        )
        sample = rollout.do_sample if do_sample is None else do_sample
        if not sample or params.greedy:  # VERL's greedy: one completion per prompt
            params = replace(params, n=1, temperature=0.0, top_p=1.0, top_k=-1)
        return params

    def _prompt_ids(self, index: int, conversation: Conversation) -> list[int]:
        schemas = self._runner.schemas if self.multi_turn else None
        try:
            ids = (
                first_prompt_ids(self.tokenizer, conversation, schemas)
                if self.multi_turn
                else prompt_token_ids(self.tokenizer, conversation)
            )
        except Exception as exc:  # a template that cannot render these messages
            raise ParamError("prompts", f"prompts[{index}]: cannot render: {exc}") from None
        limit = self.config.rollout.prompt_length
        if len(ids) > limit:
            raise ParamError(
                "rollout.prompt_length",
                f"prompts[{index}] is {len(ids)} tokens after the chat template; "
                f"rollout.prompt_length is {limit}",
            )
        return ids

    def _generate(
        self, conversations: list[Conversation], prompt_ids: list[list[int]], params: SamplingParams
    ) -> list[Response]:
        if self.multi_turn:  # a GRPO-style group: each conversation n times, seeds offset
            repeated = [c for c in conversations for _ in range(params.n)]
            return self._runner.run(repeated, replace(params, n=1))
        per_prompt = complete(self.backend, prompt_ids, params)
        return [
            Response(
                prompt_ids=c.prompt_token_ids,
                token_ids=c.token_ids,
                mask=[1] * len(c.token_ids),
                logprobs=c.logprobs,
                weight_versions=c.weight_versions,
                finish_reason=c.finish_reason,
                error=c.error,
            )
            for completions in per_prompt
            for c in completions
        ]


def _conversations(prompts: Any) -> list[Conversation]:
    """A string, a list of strings or a list of message lists, as message lists."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ParamError(
            "prompts", f"prompts must be a string or a non-empty list, got {prompts!r:.80}"
        )
    if all(isinstance(p, dict) for p in prompts):
        raise ParamError(
            "prompts",
            "prompts: a conversation must be wrapped in a list: generate([messages])",
        )
    return [_conversation(i, p) for i, p in enumerate(prompts)]


def _conversation(index: int, prompt: Any) -> Conversation:
    if isinstance(prompt, str) and prompt:
        return [{"role": "user", "content": prompt}]
    if (
        isinstance(prompt, (list, tuple))
        and prompt
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in prompt)
    ):
        return [dict(m) for m in prompt]
    raise ParamError(
        "prompts",
        f"prompts[{index}] must be a non-empty string or a non-empty list of messages "
        f"(dicts with a 'role'), got {prompt!r:.80}",
    )


def _resolve(path: str, base_dir: str | None) -> Path:
    """`path`, relative ones next to the config file first, else from the working dir."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        beside = Path(base_dir) / candidate
        if beside.exists():
            return beside
    return candidate
