"""The config of seed 003's `InferenceEngine` (VERL's rollout config shape), validated once.

Keys are VERL's (`model_path`, `trust_remote_code`, `rollout: {name, prompt_length, ...,
multi_turn: {...}}`). Keys VERL has for GPU engines or its trainer that mean nothing here
(`gpu_memory_utilization`, `enforce_eager`, ...) are accepted and have no effect, so a
VERL config loads unchanged; any other key is an error naming it by its dotted path
(`rollout.multi_turn.max_assistant_turns`), as is every bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlserve._checks import ParamError, check_bool, check_int, check_number, check_positive_int

BACKEND_NAMES = ("native", "huggingface", "hf", "auto", "vllm", "sglang", "remote")
DTYPE_ALIASES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
TRUNCATE_SIDES = ("left", "middle", "right")
SANITY_CHECK_MODES = ("strict", "disable", "ignore_strippable")
TOOL_FORMATS = ("hermes", "llama3_json", "json", "xml", "pythonic", "qwen3_coder")

# VERL rollout keys for its GPU engines, trainer and tracing: accepted, no effect here.
ROLLOUT_NO_EFFECT = (
    "mode",
    "gpu_memory_utilization",
    "enforce_eager",
    "cudagraph_capture_sizes",
    "free_cache_engine",
    "enable_chunked_prefill",  # the native engine always chunks long prefills
    "load_format",
    "layered_summon",
    "log_prob_micro_batch_size",
    "log_prob_micro_batch_size_per_gpu",
    "log_prob_use_dynamic_bsz",
    "log_prob_max_token_len_per_gpu",
    "disable_log_stats",
    "over_sample_rate",
    "multi_stage_wake_up",
    "calculate_log_probs",  # logprobs are always returned
    "val_kwargs",
    "agent",
    "update_weights_bucket_megabytes",
    "trace",
    "skip_rollout",
    "skip_dump_dir",
    "profiler",
    "_target_",
)
MULTI_TURN_NO_EFFECT = ("max_user_turns", "_target_")


def _check_optional_positive(key: str, value: object) -> None:
    if value is not None:
        check_positive_int(key, value)


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParamError(key, f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _check_optional_str(key: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ParamError(key, f"{key} must be a non-empty string, got {value!r}")


@dataclass
class MultiTurnOptions:
    """`rollout.multi_turn`: tool calling. `max_assistant_turns` None is VERL's default,
    a third of prompt_length + response_length. Tool responses longer than
    `max_tool_response_length` characters are cut on `tool_response_truncate_side`; at
    most `max_parallel_calls` calls of one reply run. `format` is the tool-call format."""

    enable: bool = False
    max_assistant_turns: int | None = None
    tool_config_path: str | None = None
    max_user_turns: int | None = None
    max_parallel_calls: int = 1
    max_tool_response_length: int = 256
    tool_response_truncate_side: str = "middle"
    interaction_config_path: str | None = None
    use_inference_chat_template: bool = False
    tokenization_sanity_check_mode: str = "strict"
    format: str = "hermes"

    def __post_init__(self) -> None:
        prefix = "rollout.multi_turn."
        check_bool(prefix + "enable", self.enable)
        _check_optional_positive(prefix + "max_assistant_turns", self.max_assistant_turns)
        _check_optional_str(prefix + "tool_config_path", self.tool_config_path)
        check_positive_int(prefix + "max_parallel_calls", self.max_parallel_calls)
        check_positive_int(prefix + "max_tool_response_length", self.max_tool_response_length)
        side = prefix + "tool_response_truncate_side"
        _check_choice(side, self.tool_response_truncate_side, TRUNCATE_SIDES)
        if self.interaction_config_path is not None:
            raise ParamError(
                prefix + "interaction_config_path",
                f"{prefix}interaction_config_path: simulated-user interactions are not "
                "supported; remove the key (tool calls are)",
            )
        check_bool(prefix + "use_inference_chat_template", self.use_inference_chat_template)
        if self.use_inference_chat_template:
            raise ParamError(
                prefix + "use_inference_chat_template",
                f"{prefix}use_inference_chat_template: rlserve always continues from the "
                "tokens it sampled (VERL's False); set it to false",
            )
        mode = prefix + "tokenization_sanity_check_mode"
        _check_choice(mode, self.tokenization_sanity_check_mode, SANITY_CHECK_MODES)
        _check_choice(prefix + "format", self.format, TOOL_FORMATS)


@dataclass
class RolloutOptions:
    """`rollout`: which backend (`name`: native, huggingface/hf, auto, or vllm / sglang /
    remote, a server at `base_url`), the sampling defaults of `generate`, and the length
    limits: a prompt longer than `prompt_length` tokens is an error (VERL's
    `data.truncation: error`); a response has at most `response_length` tokens (tool output
    included) and `metadata` pads it to that length. `n` completions per prompt.
    `batch_size`: most prompts generated together (None: all). `device` ("auto"), the
    server's `api_key` / `admin_key` and `engine_kwargs.native` (EngineConfig fields)
    are rlserve's additions."""

    name: str = "native"
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    do_sample: bool = True
    n: int = 1
    ignore_eos: bool = False
    prompt_length: int = 512
    response_length: int = 512
    dtype: str = "auto"
    device: str = "auto"
    tensor_model_parallel_size: int = 1
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool | None = None
    batch_size: int | None = None
    base_url: str | None = None
    api_key: str | None = None
    admin_key: str | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    multi_turn: MultiTurnOptions = field(default_factory=MultiTurnOptions)

    def __post_init__(self) -> None:
        _check_choice("rollout.name", self.name, BACKEND_NAMES)
        check_number("rollout.temperature", self.temperature, finite=True)
        if self.temperature < 0:
            raise ParamError("rollout.temperature", "rollout.temperature must be >= 0")
        check_int("rollout.top_k", self.top_k, minimum=-1)
        check_number("rollout.top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ParamError("rollout.top_p", f"rollout.top_p must be in (0, 1], got {self.top_p}")
        for key in ("do_sample", "ignore_eos"):
            check_bool(f"rollout.{key}", getattr(self, key))
        for key in ("n", "prompt_length", "response_length", "tensor_model_parallel_size"):
            check_positive_int(f"rollout.{key}", getattr(self, key))
        for key in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "batch_size"):
            _check_optional_positive(f"rollout.{key}", getattr(self, key))
        if self.enable_prefix_caching is not None:
            check_bool("rollout.enable_prefix_caching", self.enable_prefix_caching)
        _check_choice("rollout.dtype", self.dtype, tuple(DTYPE_ALIASES))
        self.dtype = DTYPE_ALIASES[self.dtype]
        _check_choice("rollout.device", self.device, ("auto", "cpu", "cuda"))
        for key in ("base_url", "api_key", "admin_key"):
            _check_optional_str(f"rollout.{key}", getattr(self, key))
        self._check_backend_needs()
        self._check_engine_kwargs()
        if not isinstance(self.multi_turn, MultiTurnOptions):
            raise ParamError("rollout.multi_turn", "rollout.multi_turn must be a mapping")

    @property
    def is_remote(self) -> bool:
        return self.name in ("vllm", "sglang", "remote")

    def _check_backend_needs(self) -> None:
        if self.is_remote and self.base_url is None:
            raise ParamError(
                "rollout.base_url",
                f"rollout.base_url: rollout.name {self.name!r} reaches a running server "
                "over HTTP; give its URL (in-process vLLM / SGLang cannot run here)",
            )
        if not self.is_remote and self.tensor_model_parallel_size != 1:
            raise ParamError(
                "rollout.tensor_model_parallel_size",
                f"rollout.tensor_model_parallel_size: the {self.name} backend runs on one "
                "device; set 1 (or serve the model with tensor parallelism and use remote)",
            )

    def _check_engine_kwargs(self) -> None:
        if not isinstance(self.engine_kwargs, dict):
            raise ParamError("rollout.engine_kwargs", "rollout.engine_kwargs must be a mapping")
        for engine, options in self.engine_kwargs.items():
            key = f"rollout.engine_kwargs.{engine}"
            _check_choice(key, engine, ("native", "vllm", "sglang"))
            if not isinstance(options, dict):
                raise ParamError(key, f"{key} must be a mapping of engine options")


@dataclass
class InferenceEngineConfig:
    """The whole config: the checkpoint (`model_path`, a local folder; the tokenizer's
    source for remote backends) and the `rollout` section. `base_dir` is where relative
    paths in it (the tool config) are looked up first: the config file's folder."""

    model_path: str | None = None
    trust_remote_code: bool = False
    rollout: RolloutOptions = field(default_factory=RolloutOptions)
    base_dir: str | None = None

    def __post_init__(self) -> None:
        _check_optional_str("model_path", self.model_path)
        if self.model_path is None:
            raise ParamError("model_path", "model_path is required (a local checkpoint folder)")
        check_bool("trust_remote_code", self.trust_remote_code)
        if not isinstance(self.rollout, RolloutOptions):
            raise ParamError("rollout", "rollout must be a mapping")
