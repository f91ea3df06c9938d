"""The inference-backend seam: token ids in, sampled token ids and logprobs out.

`InferenceBackend` is what the layers above (rollouts, seed API shapes) need from a policy:
its tokenizer, its context length, `generate(requests, on_done)` (every request concurrently,
each `Sample` reported as it finishes), teacher-forced `score` / `logits`, and the weight
control plane (`update_weights`, `load_adapter`). The native engine, Hugging Face
`transformers`, an OpenAI-compatible server and Tinker implement it; a backend that cannot
do something raises `BackendUnsupported` naming itself. Rollouts need only `tokenizer`,
`max_model_len` and `generate`, so any object with those three can stand in there, e.g. a
scripted policy in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rlserve._checks import is_int, is_token_ids
from rlserve.outputs import CompletionOutput
from rlserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

Request = tuple[list[int], SamplingParams]
# Returns the indices of requests to cancel (None: none); see the module docstring.
OnDone = Callable[[int, "Sample"], "Iterable[int] | None"]
ScorePair = tuple[list[int], list[int]]  # (prompt token ids, response token ids)
UNKNOWN_VERSION = -1  # the weight version of a token whose backend does not report it
CANCEL_REASON = "cancelled"  # stop_reason of a request cancelled through on_done
POLL_INTERVAL_S = 0.05  # how often a backend waiting on the network calls on_done.poll()


class BackendUnsupported(NotImplementedError):
    """A backend cannot do `operation` at all (not a bad argument: no input would work)."""

    def __init__(self, backend: str, operation: str, reason: str) -> None:
        super().__init__(f"the {backend} backend cannot {operation}: {reason}")
        self.backend = backend
        self.operation = operation


@dataclass
class Sample:
    """One finished completion; `error` is set when the request failed outside the model
    (rejected, server error), and then nothing was sampled."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    weight_versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> Sample:
        return cls(finish_reason="error", error=error)

    @classmethod
    def from_output(cls, output: CompletionOutput) -> Sample:
        """The tokens, logprobs and weight versions of a finished engine completion."""
        return cls(
            output.token_ids,
            output.logprobs,
            output.weight_versions,
            output.finish_reason,
            output.stop_reason,
        )

    @property
    def ends_with_stop_token(self) -> bool:
        """The last token is an EOS or stop token id (not text matched by a stop string)."""
        return (
            self.finish_reason == "stop"
            and bool(self.token_ids)
            and not isinstance(self.stop_reason, str)
        )


def cancelled_sample(sampled: Sample | None = None) -> Sample:
    """How a cancelled request is reported: finish_reason "abort", stop_reason
    CANCEL_REASON, with the tokens `sampled` had (none if None)."""
    part = sampled or Sample()
    return Sample(
        list(part.token_ids),
        list(part.logprobs),
        list(part.weight_versions),
        "abort",
        CANCEL_REASON,
    )


class Cancels:
    """What one `generate` call was asked to cancel: every index `on_done` returned or
    its `poll()` gave, kept until the backend takes it (`take`)."""

    def __init__(self, on_done: OnDone, num_requests: int) -> None:
        self.on_done = on_done
        self.num_requests = num_requests
        self._poll: Callable[[], Iterable[int] | None] | None = getattr(on_done, "poll", None)
        self._asked: set[int] = set()
        self._new: list[int] = []

    def report(self, index: int, sample: Sample) -> None:
        """Call `on_done(index, sample)` and note what it asks to cancel."""
        self._note(self.on_done(index, sample), "on_done")

    def poll(self) -> None:
        if self._poll is not None:
            self._note(self._poll(), "on_done.poll()")

    def asked(self, index: int) -> bool:
        return index in self._asked

    def take(self) -> list[int]:
        """The indices asked for since the last call, in order."""
        new, self._new = self._new, []
        return new

    def _note(self, indices: Iterable[int] | None, source: str) -> None:
        if indices is None:
            return
        if not isinstance(indices, Iterable) or isinstance(indices, (str, bytes)):
            raise ValueError(
                f"{source} must return request indices to cancel or None, got {indices!r}"
            )
        for index in indices:
            if not (is_int(index) and 0 <= index < self.num_requests):
                raise ValueError(
                    f"{source} must return request indices in [0, {self.num_requests}) to "
                    f"cancel, got {index!r}"
                )
            if index not in self._asked:
                self._asked.add(index)
                self._new.append(index)


def report_as_completed(
    futures: Mapping[Future, int], cancels: Cancels, result: Callable[[Future], Sample]
) -> None:
    """Report `result(future)` for each future as it finishes, and a cancelled sample for
    each one asked to be cancelled first (a future not yet started is cancelled; one
    running is left to finish and its result dropped)."""
    by_index = {k: f for f, k in futures.items()}
    open_ = dict(futures)
    while open_:
        done, _ = wait(open_, timeout=POLL_INTERVAL_S, return_when=FIRST_COMPLETED)
        for future in done:
            if future in open_:
                cancels.report(open_.pop(future), result(future))
        cancels.poll()
        for k in cancels.take():
            future = by_index[k]
            if future in open_:
                del open_[future]
                future.cancel()
                cancels.report(k, cancelled_sample())


def split_pairs(pairs: object) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, responses) of a non-empty list of (prompt ids, response ids) pairs, each a
    non-empty list of token ids; ValueError naming what is wrong otherwise. Text is refused:
    scoring must see exactly the generated tokens (contract 4)."""
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError("pairs must be a non-empty list of (prompt_ids, response_ids) pairs")
    prompts, responses = [], []
    for k, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"pairs[{k}] must be a (prompt_ids, response_ids) pair, got {pair!r}")
        for part, ids in zip(("prompt_ids", "response_ids"), pair, strict=True):
            if not is_token_ids(ids) or not ids:
                raise ValueError(
                    f"pairs[{k}] {part} must be a non-empty list of token ids (score takes "
                    f"token ids, not text), got {ids!r:.60}"
                )
        prompts.append(list(pair[0]))
        responses.append(list(pair[1]))
    return prompts, responses


@runtime_checkable
class InferenceBackend(Protocol):
    """A policy to sample from and score with, whatever runs it."""

    name: str  # "native" | "huggingface" | "remote" | "tinker": named in error messages
    tokenizer: Any  # a Hugging Face tokenizer
    max_model_len: int | None  # prompt + completion tokens; None: unknown

    @property
    def policy_version(self) -> int:
        """The weight version new requests run on; UNKNOWN_VERSION if the backend cannot
        tell (then callers never cache its results)."""
        ...

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        """Complete every request (n = 1) together; call `on_done(index, sample)` on the
        calling thread as each one finishes. A request that fails alone is reported as
        `Sample.failed(...)`; the others go on. `on_done` (and its optional `poll()`) may
        return indices of requests to cancel (module docstring)."""
        ...

    def score(self, pairs: list[ScorePair], temperature: float = 1.0) -> list[list[float]]:
        """Teacher-forced logprob of every response token, log_softmax(logits / T): the
        numbers `generate` reports for them (DESIGN contract 2)."""
        ...

    def logits(self, pairs: list[ScorePair]) -> list[torch.Tensor]:
        """Per pair a float32 [len(response), vocab] tensor; row t predicts response[t]."""
        ...

    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | str, version: int | None = None
    ) -> int:
        """Load a state dict (Hugging Face names) or a checkpoint path; the new version."""
        ...

    def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT LoRA folder `path` under `name`."""
        ...

    def close(self) -> None:
        """Release what the backend holds; calling it again does nothing."""
        ...
