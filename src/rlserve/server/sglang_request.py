"""SGLang's native `/generate` body, checked and turned into rlserve's sampling fields.

Fields and defaults as SGLang's `GenerateReqInput` (`sglang/srt/managers/io_struct.py`)
and `SamplingParams` (`sglang/srt/sampling/sampling_params.py`): `text` or `input_ids`
(one prompt or a batch), `sampling_params` (one object, or one per prompt; a null field
means its default, as in SGLang), `return_logprob`, `logprob_start_len` (-1: no prompt
logprobs), `top_logprobs_num`, `return_text_in_logprobs`, `stream`, `rid`, `lora_path`
(an adapter's model id), `return_prompt_token_ids`, and the grammars `json_schema` (a
schema's JSON text, or `$$ANY$$`), `regex` and `ebnf` (at most one; server/
structured_outputs.py `sglang_structured`). Unknown fields are ignored, as SGLang does;
known ones that rlserve cannot honour (multimodal data, embeddings, structural tags, stop
regexes, hidden states, routed experts, ...) are 400s naming the field.
SGLang's names map onto rlserve's: `max_new_tokens` -> max_tokens (default 128, null:
the rest of the context), `min_new_tokens` -> min_tokens, `sampling_seed` -> seed,
`no_stop_trim` -> include_stop_str_in_output.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from rlserve.server.errors import APIError, validation_message
from rlserve.server.protocol import Int64, SamplingFields
from rlserve.server.structured_outputs import SGLANG_FIELDS, sglang_structured

if TYPE_CHECKING:
    from rlserve.engine.call_args import Prompt
    from rlserve.engine.structured import StructuredOutput

SGLANG_DEFAULT_MAX_NEW_TOKENS = 128  # SamplingParams.max_new_tokens
# Keys only SGLang's body has: with any of them (and no `prompt`), /generate is SGLang's.
SGLANG_KEYS = frozenset(
    {
        "text",
        "sampling_params",
        "return_logprob",
        "logprob_start_len",
        "top_logprobs_num",
        "return_text_in_logprobs",
        "rid",
        "lora_path",
        "token_ids_logprob",
    }
)
# rlserve field -> SGLang's name, for the `param` of an error.
SGLANG_NAMES = {
    "max_tokens": "sampling_params.max_new_tokens",
    "min_tokens": "sampling_params.min_new_tokens",
    "seed": "sampling_params.sampling_seed",
    "include_stop_str_in_output": "sampling_params.no_stop_trim",
    "logprobs": "top_logprobs_num",
    "prompt_logprobs": "top_logprobs_num",
    "max_new_tokens": "sampling_params.max_new_tokens",
    "prompt": "input_ids",
    "model": "lora_path",
}
_UNSUPPORTED_SAMPLING = ("stop_regex", "structural_tag")
_UNSUPPORTED_FLAGS = (
    "input_embeds",
    "token_ids_logprob",
    "return_hidden_states",
    "return_routed_experts",
    "return_indexer_topk",
    "return_entropy",
    "return_sampling_mask",
    "custom_logit_processor",
    "session_params",
)
_MEDIA = ("image_data", "video_data", "audio_data")


def is_sglang_body(body: dict[str, Any]) -> bool:
    """SGLang's body has one of `SGLANG_KEYS`; rlserve's (seed 002) has `prompt` or only
    flat fields (`input_ids`, `max_tokens`, `temperature`, ...)."""
    return "prompt" not in body and not SGLANG_KEYS.isdisjoint(body)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class SGLangSampling(_Strict):
    """One `sampling_params` object."""

    max_new_tokens: Int64 | None = SGLANG_DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: Int64 | None = None
    n: Int64 | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Int64 | None = None
    min_p: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Int64] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None  # rlserve's decode never adds them
    no_stop_trim: bool | None = None
    sampling_seed: Int64 | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    custom_params: dict[str, Any] | None = None  # for custom logit processors: unused
    stream_interval: Int64 | None = None  # rlserve streams every engine step
    beam_width: Int64 | None = None
    stop_regex: str | list[str] | None = None
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None


class SGLangBody(_Strict):
    """The top level of SGLang's `/generate` body. Other keys are kept (`model_extra`) so
    that `check_supported` can refuse the inputs rlserve cannot honour by name."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    text: str | list[str] | None = None
    input_ids: list[Int64] | list[list[Int64]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    return_logprob: bool | list[bool] | None = None
    logprob_start_len: Int64 | list[Int64] | None = None
    top_logprobs_num: Int64 | list[Int64] | None = None
    return_text_in_logprobs: bool = False
    return_prompt_token_ids: bool = False
    stream: bool = False
    rid: str | list[str] | None = None
    lora_path: str | list[str | None] | None = None


@dataclass
class SGLangItem:
    """One prompt of the request, with everything its engine request needs."""

    prompt: Prompt
    fields: SamplingFields
    max_tokens: int | None  # None: the default (`--max-tokens`, else the context)
    requested: bool  # the client set max_new_tokens (then overflowing the context is a 400)
    return_logprob: bool
    logprob_start_len: int
    top_logprobs_num: int
    lora_path: str | None
    rid: str
    structured: StructuredOutput | None = None  # json_schema / regex / ebnf


def validated(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    """`data` as `model`; a 400 naming the first bad field (under `prefix`)."""
    if not isinstance(data, dict):
        raise APIError(400, f"{prefix or 'the body'} must be a JSON object", prefix or None)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        name = f"{prefix}.{param}" if prefix and param else prefix or param
        raise APIError(400, f"{prefix + '.' if prefix else ''}{message}", name) from exc
    except RecursionError as exc:
        raise APIError(400, "the request body is nested too deeply") from exc


def _has_media(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_media(v) for v in value)
    return value is not None


def check_supported(body: SGLangBody) -> None:
    """400 for inputs rlserve cannot honour (given at a non-neutral value)."""
    extra = body.model_extra or {}
    for name in _UNSUPPORTED_FLAGS:
        if extra.get(name) not in (None, False, [], {}, ""):
            raise APIError(400, f"{name} is not supported by rlserve's /generate", name)
    for name in _MEDIA:
        if _has_media(extra.get(name)):
            raise APIError(400, f"{name}: rlserve serves text-only models", name)


def prompts_of(body: SGLangBody) -> tuple[list[Prompt], bool]:
    """The prompts, and whether the body was a batch."""
    if (body.text is None) == (body.input_ids is None):
        raise APIError(400, "give exactly one of text or input_ids", "text")
    if isinstance(body.text, str):
        return [body.text], False
    value: list[Any] = body.text if body.text is not None else body.input_ids  # type: ignore[assignment]
    param = "text" if body.text is not None else "input_ids"
    if not value:
        raise APIError(400, f"{param} cannot be empty", param)
    if all(isinstance(t, int) for t in value):
        return [list(value)], False
    return list(value), True


def per_prompt(value: Any, count: int, batch: bool, param: str, default: Any) -> list[Any]:
    """One value per prompt: a batch's list (of `count`), or one value for all."""
    if isinstance(value, list):
        if not batch or len(value) != count:
            need = f"a list of {count} (one per prompt)" if batch else "a single value"
            raise APIError(400, f"{param} must be {need}, got {len(value)} values", param)
        return [default if v is None else v for v in value]
    return [default if value is None else value] * count


def sampling_fields(sp: SGLangSampling) -> tuple[SamplingFields, int | None, bool]:
    """rlserve's sampling fields for one `sampling_params`, its max_tokens and whether the
    client set it."""
    for name in _UNSUPPORTED_SAMPLING:
        if getattr(sp, name) is not None:
            param = f"sampling_params.{name}"
            raise APIError(400, f"{param} is not supported by rlserve's /generate", param)
    if (sp.beam_width or 1) > 1:
        raise APIError(400, "beam search is not supported", "sampling_params.beam_width")
    fields = SamplingFields(
        n=1 if sp.n is None else sp.n,
        temperature=sp.temperature,
        top_p=sp.top_p,
        top_k=sp.top_k,
        min_p=sp.min_p,
        min_tokens=sp.min_new_tokens or 0,
        stop=sp.stop,
        stop_token_ids=sp.stop_token_ids,
        ignore_eos=bool(sp.ignore_eos),
        seed=sp.sampling_seed,
        skip_special_tokens=sp.skip_special_tokens is not False,
        include_stop_str_in_output=bool(sp.no_stop_trim),
        presence_penalty=sp.presence_penalty,
        frequency_penalty=sp.frequency_penalty,
        repetition_penalty=sp.repetition_penalty,
        logit_bias=sp.logit_bias,
    )
    requested = "max_new_tokens" in sp.model_fields_set and sp.max_new_tokens is not None
    return fields, sp.max_new_tokens, requested


def rids(value: Any, count: int, batch: bool) -> list[str]:
    """SGLang's request ids: the given ones; a batch's string as the prefix of `rid_i`;
    else fresh hex ids."""
    if isinstance(value, str) and batch:
        return [f"{value}_{i}" for i in range(count)]
    given = per_prompt(value, count, batch, "rid", None)
    return [uuid.uuid4().hex if rid is None else rid for rid in given]


def sglang_items(body: SGLangBody) -> tuple[list[SGLangItem], bool]:
    """One item per prompt, in the prompts' order, and whether the body was a batch; 400
    naming any bad field."""
    check_supported(body)
    prompts, batch = prompts_of(body)
    count = len(prompts)
    raw_params = per_prompt(body.sampling_params, count, batch, "sampling_params", {})
    samplings = [validated(SGLangSampling, sp, "sampling_params") for sp in raw_params]
    if len({1 if sp.n is None else sp.n for sp in samplings}) > 1:
        raise APIError(400, "every prompt must ask for the same n", "sampling_params.n")
    logprob = per_prompt(body.return_logprob, count, batch, "return_logprob", False)
    starts = per_prompt(body.logprob_start_len, count, batch, "logprob_start_len", -1)
    tops = per_prompt(body.top_logprobs_num, count, batch, "top_logprobs_num", 0)
    loras = per_prompt(body.lora_path, count, batch, "lora_path", None)
    ids = rids(body.rid, count, batch)
    items = []
    for i, prompt in enumerate(prompts):
        if starts[i] < -1:
            raise APIError(400, "logprob_start_len must be >= -1", "logprob_start_len")
        if tops[i] < 0:
            raise APIError(400, "top_logprobs_num must be >= 0", "top_logprobs_num")
        fields, max_tokens, requested = sampling_fields(samplings[i])
        items.append(
            SGLangItem(
                prompt,
                fields,
                max_tokens,
                requested,
                bool(logprob[i]),
                starts[i],
                tops[i],
                loras[i],
                ids[i],
                sglang_structured({name: getattr(samplings[i], name) for name in SGLANG_FIELDS}),
            )
        )
    return items, batch
