"""`ServiceBackend`: a "service holder" (seed 000's pattern) behind `InferenceBackend`.

A service holder (NexRL's `TinkerServiceHolder` / `WeaverServiceHolder`) samples with
`sample_from_prompt(prompt=text, max_tokens=, temperature=, num_samples=1)` and answers
{"response", "prompt_tokens", "response_tokens", "response_logprobs", "finish_reason",
...}; some also score with `compute_logprobs(tokens)` (a list of float | None, None at
position 0). It takes text, so a token-id prompt is decoded (special tokens kept) and the
holder's `prompt_tokens` must give the same ids back, else that request fails: tokens are
never silently re-tokenised (DESIGN contract 4). Only max_tokens and temperature reach it
(the holder adds its renderer's stop sequences); any other sampling option raises
`BackendUnsupported` before anything is sent. The helpers below are shared with
`rlserve.backends.tinker`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rlserve._checks import check_positive_int, is_token_ids
from rlserve.backends.base import (
    UNKNOWN_VERSION,
    BackendUnsupported,
    Cancels,
    OnDone,
    Request,
    Sample,
    ScorePair,
    report_as_completed,
    split_pairs,
)
from rlserve.engine.call_args import score_params
from rlserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

_DEFAULTS = SamplingParams()
# SamplingParams fields that change what is sampled and that tinker cannot express.
NOT_IN_TINKER = tuple(
    "n min_p min_tokens presence_penalty frequency_penalty repetition_penalty logit_bias "
    "allowed_token_ids bad_words bad_words_token_ids prefix_choices truncate_prompt_tokens "
    "structured".split()
)
NOT_IN_SERVICE = (*NOT_IN_TINKER, *"top_p top_k seed stop stop_token_ids ignore_eos".split())
TINKER_TAKES = "tinker's SamplingParams has only max_tokens, temperature, top_p, top_k, seed, stop"
SERVICE_TAKES = "a service holder's sample_from_prompt takes only max_tokens and temperature"


class ServiceBackend:
    """Samples through a service holder's `sample_from_prompt` (module docstring); scores
    with its `compute_logprobs(tokens)` when it has one."""

    name = "tinker"

    def __init__(
        self,
        service: Any,
        tokenizer: Any,
        max_model_len: int | None = None,
        max_concurrency: int = 64,
    ) -> None:
        if not callable(getattr(service, "sample_from_prompt", None)):
            raise TypeError("service must be a service holder with sample_from_prompt(...)")
        self.service = service
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_concurrency = check_positive_int("max_concurrency", max_concurrency)

    @property
    def policy_version(self) -> int:
        return UNKNOWN_VERSION  # the holder swaps its sampler without numbering it

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        for _, params in requests:
            refuse_unsupported(self.name, params, NOT_IN_SERVICE, SERVICE_TAKES)
        cancels = Cancels(on_done, len(requests))
        workers = max(1, min(len(requests), self.max_concurrency))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="rlserve-service")
        try:
            futures = {pool.submit(self._sample, *r): k for k, r in enumerate(requests)}
            report_as_completed(futures, cancels, Future.result)  # _sample catches
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _sample(self, prompt: list[int], params: SamplingParams) -> Sample:
        if not (is_token_ids(prompt) and prompt):
            return Sample.failed("request rejected: the prompt must be token ids")
        text = self.tokenizer.decode(prompt, skip_special_tokens=False)
        try:
            result = self.service.sample_from_prompt(
                prompt=text,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                num_samples=1,
            )
        except Exception as exc:  # the service's failure: this request only
            return Sample.failed(f"{type(exc).__name__}: {exc}")
        return service_sample(result, list(prompt))

    def score(self, pairs: list[ScorePair], temperature: float = 1.0) -> list[list[float]]:
        score_tokens = getattr(self.service, "compute_logprobs", None)
        if not callable(score_tokens):
            raise BackendUnsupported(
                self.name, "score", "the service holder has no compute_logprobs"
            )
        prompts, responses = split_pairs(pairs)
        require_t1(self.name, temperature, "the service's compute_logprobs is at T = 1")
        return [
            response_part(score_tokens(p + r), len(p))
            for p, r in zip(prompts, responses, strict=True)
        ]

    def logits(self, pairs: list[ScorePair]) -> list[torch.Tensor]:
        raise BackendUnsupported(self.name, "return logits", "a service holder returns no logits")

    def update_weights(self, weights: Mapping[str, Any] | str, version: int | None = None) -> int:
        raise BackendUnsupported(
            self.name,
            "update weights",
            "a service holder's weights change through its own training calls "
            "(optim_step, then a new sampler path), not through inference",
        )

    def load_adapter(self, name: str, path: str) -> None:
        raise BackendUnsupported(self.name, "load an adapter", "a service holder loads none")

    def close(self) -> None:
        """Nothing to release: the service holder belongs to the caller."""


def refuse_unsupported(
    backend: str, params: SamplingParams, names: Iterable[str], takes: str
) -> None:
    """BackendUnsupported for the first field in `names` that is not at its default;
    `takes` says what the sampler does take."""
    for name in names:
        if getattr(params, name) != getattr(_DEFAULTS, name):
            value = getattr(params, name)
            raise BackendUnsupported(backend, f"sample with {name}={value!r:.60}", takes)


def require_t1(backend: str, temperature: float, why: str) -> None:
    if score_params(temperature).logprob_temperature != 1.0:
        raise BackendUnsupported(backend, f"score at temperature {temperature}", why)


def service_sample(result: Any, prompt: list[int]) -> Sample:
    """A `Sample` from a service holder's `sample_from_prompt` reply."""
    if not isinstance(result, dict):
        return Sample.failed(f"the service returned {type(result).__name__}, not a dict")
    if list(result.get("prompt_tokens") or []) != prompt:
        return Sample.failed(
            "the service re-tokenised the prompt into other token ids than were sent "
            "(it takes text); the sample would not continue the prompt given"
        )
    tokens = list(result.get("response_tokens") or [])
    logprobs = list(result.get("response_logprobs") or [])
    if len(logprobs) != len(tokens):
        return Sample.failed("the service returned no logprobs for the sampled tokens")
    versions = [UNKNOWN_VERSION] * len(tokens)
    return Sample(tokens, [float(x) for x in logprobs], versions, result.get("finish_reason"))


def response_part(logprobs: Any, prompt_len: int) -> list[float]:
    """The response positions of per-token prompt logprobs (None at position 0)."""
    if isinstance(logprobs, Sample):  # a failed future: scoring has no per-request failure
        raise RuntimeError(f"scoring failed: {logprobs.error}")
    part = list(logprobs)[prompt_len:]
    if any(lp is None for lp in part):
        raise RuntimeError("the sampler returned no logprob for some response tokens")
    return [float(lp) for lp in part]
