"""`TinkerBackend`: the tinker SDK's `SamplingClient` behind `InferenceBackend`.

`sample(prompt=ModelInput, num_samples=1, sampling_params=types.SamplingParams(...))` per
request (all submitted at once, collected as their futures finish) and
`compute_logprobs(prompt)` for `score` (T = 1 only). Tinker's `SamplingParams` has
`max_tokens`, `temperature`, `top_p`, `top_k`, `seed` and `stop` (strings or token ids); a
request that needs more (min_p, penalties, grammars...) raises `BackendUnsupported` before
anything is sent. Stop: none given keeps the implicit EOS stop (`stop=None`); `ignore_eos`
alone sends `stop=[]` (which disables EOS); stop token ids are sent with the EOS id added.
Tinker does not say which weights sampled a token, so weight versions (and
`policy_version`) are UNKNOWN_VERSION. Logprobs come back as float32 (the SDK's arrays).
A service holder (seed 000's pattern) is `ServiceBackend` (`service_holder.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, as_completed
from typing import TYPE_CHECKING, Any

from rlserve._checks import is_token_ids
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
from rlserve.backends.service_holder import (
    NOT_IN_TINKER,
    TINKER_TAKES,
    ServiceBackend,
    refuse_unsupported,
    require_t1,
    response_part,
)
from rlserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

__all__ = ["ServiceBackend", "TinkerBackend", "tinker_types"]
SDK_MISSING = "the tinker backend needs the tinker SDK: pip install 'rlserve[tinker]'"


def tinker_types() -> Any:
    """`tinker.types`, or an ImportError naming the extra that installs it."""
    try:
        from tinker import types
    except ImportError as exc:
        raise ImportError(SDK_MISSING) from exc
    return types


class TinkerBackend:
    """Samples and scores through a tinker `SamplingClient` (module docstring)."""

    name = "tinker"

    def __init__(self, sampling_client: Any, tokenizer: Any, max_model_len: int | None = None):
        for method in ("sample", "compute_logprobs"):
            if not callable(getattr(sampling_client, method, None)):
                raise TypeError(f"sampling_client must be a tinker SamplingClient (no {method})")
        self.types = tinker_types()
        self.client = sampling_client
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    @property
    def policy_version(self) -> int:
        return UNKNOWN_VERSION  # a SamplingClient serves fixed weights it does not number

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        """Every request submitted at once; a cancelled one is reported at once and its
        result dropped (tinker has no call to withdraw a submitted sample)."""
        params = [self.sampling_params(p) for _, p in requests]  # refuse before sending
        cancels = Cancels(on_done, len(requests))
        futures: dict[Future, int] = {}
        for k, ((prompt, _), sp) in enumerate(zip(requests, params, strict=True)):
            if not (is_token_ids(prompt) and prompt):
                cancels.report(k, Sample.failed("request rejected: the prompt must be token ids"))
                continue
            model_input = self.types.ModelInput.from_ints(list(prompt))
            try:
                sent = self.client.sample(prompt=model_input, num_samples=1, sampling_params=sp)
            except Exception as exc:  # refused before it was sent: this request only
                cancels.report(k, Sample.failed(f"{type(exc).__name__}: {exc}"))
                continue
            futures[_standard(sent)] = k

        def outcome(future: Future) -> Sample:
            try:
                return self._sample(future.result(), requests[futures[future]][1])
            except Exception as exc:  # that request only
                return Sample.failed(f"{type(exc).__name__}: {exc}")

        report_as_completed(futures, cancels, outcome)

    def _sample(self, response: Any, params: SamplingParams) -> Sample:
        """A `Sample` from a SampleResponse's first sequence. Tinker does not say which stop
        matched: it is the last token when that is a stop id, else a stop string the text
        ends with (or contains: a token may run past the string's end)."""
        sample = sequence_sample(response)
        if sample.finish_reason != "stop" or not sample.token_ids:
            return sample
        if sample.token_ids[-1] in params.stop_token_ids:
            sample.stop_reason = sample.token_ids[-1]
        elif params.stop:
            text = self.tokenizer.decode(sample.token_ids[-8:], skip_special_tokens=False)
            ends = [s for s in params.stop if text.endswith(s)] or [
                s for s in params.stop if s in text
            ]
            sample.stop_reason = ends[0] if ends else None
        return sample

    def sampling_params(self, params: SamplingParams) -> Any:
        """Tinker's `types.SamplingParams` for `params` (BackendUnsupported when it needs
        what tinker cannot do)."""
        refuse_unsupported(self.name, params, NOT_IN_TINKER, TINKER_TAKES)
        return self.types.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=params.seed,
            stop=self._stop(params),
        )

    def _stop(self, params: SamplingParams) -> list[str] | list[int] | None:
        if params.stop and params.stop_token_ids:
            raise BackendUnsupported(
                self.name, "stop on both strings and token ids", "tinker's stop is one or the other"
            )
        if params.ignore_eos and (params.stop or params.stop_token_ids):
            raise BackendUnsupported(
                self.name, "ignore EOS but keep other stops", "tinker's stop=[] disables them all"
            )
        if params.stop:
            return list(params.stop)
        if params.stop_token_ids:
            eos = self.tokenizer.eos_token_id
            return list(
                dict.fromkeys([*params.stop_token_ids, *([eos] if eos is not None else [])])
            )
        return [] if params.ignore_eos else None

    def score(self, pairs: list[ScorePair], temperature: float = 1.0) -> list[list[float]]:
        """`compute_logprobs` of prompt + response, the response's part; T = 1 only."""
        prompts, responses = split_pairs(pairs)
        require_t1(self.name, temperature, "tinker's compute_logprobs is at T = 1")
        futures = {
            k: self.client.compute_logprobs(self.types.ModelInput.from_ints(p + r))
            for k, (p, r) in enumerate(zip(prompts, responses, strict=True))
        }
        results = dict(finished(futures))
        return [response_part(results[k], len(prompts[k])) for k in range(len(prompts))]

    def logits(self, pairs: list[ScorePair]) -> list[torch.Tensor]:
        raise BackendUnsupported(self.name, "return logits", "tinker returns logprobs, not logits")

    def update_weights(self, weights: Mapping[str, Any] | str, version: int | None = None) -> int:
        raise BackendUnsupported(
            self.name,
            "update weights",
            "Tinker's weights change through its TrainingClient (optim_step, then "
            "save_weights_and_get_sampling_client); build a backend over the new SamplingClient",
        )

    def load_adapter(self, name: str, path: str) -> None:
        raise BackendUnsupported(
            self.name,
            "load an adapter",
            "a SamplingClient serves the weights it was created from; create one for the "
            "adapter with ServiceClient.create_sampling_client(model_path=...)",
        )

    def close(self) -> None:
        """Nothing to release: the SamplingClient belongs to the caller."""


def finished(futures: Mapping[int, Any]) -> Iterable[tuple[int, Any]]:
    """(key, result) as each future finishes (tinker's APIFutures via `.future()`); a
    failed future gives `Sample.failed`."""
    standard: dict[Future, int] = {_standard(f): k for k, f in futures.items()}
    for future in as_completed(standard):
        try:
            yield standard[future], future.result()
        except Exception as exc:  # that request only
            yield standard[future], Sample.failed(f"{type(exc).__name__}: {exc}")


def _standard(future: Any) -> Future:
    to_future: Callable[[], Future] | None = getattr(future, "future", None)
    return to_future() if callable(to_future) else future


def sequence_sample(response: Any) -> Sample:
    """A `Sample` from a tinker SampleResponse's first sequence (stop_reason unset)."""
    sequence = response.sequences[0]
    tokens, logprobs = list(sequence.tokens), sequence.logprobs
    if logprobs is None or len(logprobs) != len(tokens):
        return Sample.failed("the sampler returned no logprobs for the sampled tokens")
    versions = [UNKNOWN_VERSION] * len(tokens)
    return Sample(tokens, [float(x) for x in logprobs], versions, sequence.stop_reason)
