"""The inference-backend seam: token ids in, sampled token ids and logprobs out.

`InferenceBackend` is what the layers above (rollouts, seed API shapes) need from a policy:
its tokenizer, its context length, and `generate(requests, on_done)`, which runs every
request concurrently (one continuous batch) and reports each `Sample` as it finishes.
The native engine (`rlserve.backends.native`) and an OpenAI-compatible server reached over
HTTP (`rlserve.backends.remote`) implement it; any object with the same three members can
stand in, e.g. a scripted policy in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rlserve.outputs import CompletionOutput
from rlserve.sampling_params import SamplingParams

Request = tuple[list[int], SamplingParams]
OnDone = Callable[[int, "Sample"], None]
UNKNOWN_VERSION = -1  # the weight version of a token whose backend does not report it


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


@runtime_checkable
class InferenceBackend(Protocol):
    """A policy to sample from, whatever runs it."""

    tokenizer: Any
    max_model_len: int | None  # prompt + completion tokens; None: unknown

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        """Complete every request (n = 1) together; call `on_done(index, sample)` on the
        calling thread as each one finishes. A request that fails alone is reported as
        `Sample.failed(...)`; the others go on."""
