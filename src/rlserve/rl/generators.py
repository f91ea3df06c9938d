"""One generation round for many trajectories: token ids in, token ids and logprobs out.

`TokenGenerator` is what the rollout loop needs from a policy: a tokenizer, the context
length, and `generate(requests, on_done)`, which runs every request concurrently (one
continuous batch) and reports each sample as it finishes. Two implementations: the
native `Engine` (driven step by step on the calling thread) and the HTTP `Client`
(`/v1/completions` with a token-id prompt, `return_token_ids` and logprobs, one request
per trajectory sent concurrently, so the server batches them). Any object with the same
three members can be passed instead, e.g. a scripted policy in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlserve.engine import Engine
from rlserve.outputs import CompletionOutput
from rlserve.sampling_params import SamplingParams

Request = tuple[list[int], SamplingParams]
OnDone = Callable[[int, "Sample"], None]
UNKNOWN_VERSION = -1


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

    @property
    def ends_with_stop_token(self) -> bool:
        """The last token is an EOS or stop token id (not text matched by a stop string)."""
        return (self.finish_reason == "stop" and bool(self.token_ids)
                and not isinstance(self.stop_reason, str))


class TokenGenerator(Protocol):
    """What the rollout loop drives."""

    tokenizer: Any
    max_model_len: int | None

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        """Complete every request (n = 1) together; call `on_done(index, sample)` on the
        calling thread as each one finishes."""


class EngineGenerator:
    """Drives an `Engine`: adds every request, then steps until all of them finish. The
    rollout owns the engine meanwhile (it must have no other requests in flight)."""

    def __init__(self, engine: Engine, lora_name: str | None = None) -> None:
        if engine.has_unfinished_requests():
            raise RuntimeError("rollout drives the engine itself: finish or abort the "
                               "requests already in it first")
        self.engine = engine
        self.lora_name = lora_name
        self.tokenizer = engine.tokenizer
        self.max_model_len: int | None = engine.max_model_len

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        engine = self.engine
        if engine.paused is not None:
            raise RuntimeError(f"the engine is paused ({engine.paused!r}); call resume() first")
        pending: dict[str, int] = {}
        samples: dict[int, Sample] = {}
        try:
            for k, (prompt, params) in enumerate(requests):
                try:
                    request_id = engine.add_request(prompt, params, lora_name=self.lora_name)
                except ValueError as exc:  # this request only: the others go on
                    on_done(k, Sample.failed(f"request rejected: {exc}"))
                    continue
                pending[request_id], samples[k] = k, Sample()
            while pending:
                for delta in engine.step():
                    k = pending.get(delta.request_id)
                    if k is None:
                        continue
                    for out in delta.outputs:
                        _merge(samples[k], out)
                    if delta.finished:
                        del pending[delta.request_id]
                        failed = delta.error is not None  # broke inside the engine
                        on_done(k, Sample.failed(delta.error) if failed else samples[k])
        except BaseException:
            for request_id in pending:
                engine.abort(request_id)
            engine.step()  # reports (and forgets) the aborted requests; frees their KV
            raise


class ClientGenerator:
    """Generates through an rlserve (or vLLM / SGLang) server with the sync `Client`.

    Needs `client.tokenizer`. Weight versions come from the server when it reports them
    per token (`weight_versions` on the choice), else are -1 (unknown).
    """

    def __init__(self, client: Any, lora_name: str | None = None,
                 max_model_len: int | None = None, max_concurrency: int = 64) -> None:
        self.client = client
        self.model = lora_name
        self.tokenizer = client.tokenizer
        self._max_model_len = max_model_len
        self.max_concurrency = max_concurrency

    @property
    def max_model_len(self) -> int | None:
        """From the server's model card (`/v1/models`) unless given; None if unknown."""
        if self._max_model_len is None:
            try:
                cards = self.client.models().get("data") or [{}]
            except Exception:  # no card, no limit: the request errors will tell
                return None
            value = cards[0].get("max_model_len")
            self._max_model_len = int(value) if isinstance(value, int) else None
        return self._max_model_len

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        workers = max(1, min(len(requests), self.max_concurrency))
        with ThreadPoolExecutor(workers, thread_name_prefix="rlserve-rollout") as pool:
            futures = {pool.submit(self._complete, prompt, params): k
                       for k, (prompt, params) in enumerate(requests)}
            for future in as_completed(futures):
                on_done(futures[future], future.result())

    def _complete(self, prompt: list[int], params: SamplingParams) -> Sample:
        fields = completion_fields(params)
        if self.model is not None:
            fields["model"] = self.model
        try:
            response = self.client.completion(prompt, **fields)
        except Exception as exc:  # transport and server errors: not the model's fault
            return Sample.failed(f"{type(exc).__name__}: {exc}")
        return sample_from_completion(response)


def completion_fields(params: SamplingParams) -> dict[str, Any]:
    """`/v1/completions` body fields for `params` (n = 1; the client adds logprobs and
    token ids)."""
    return {
        "max_tokens": params.max_tokens, "temperature": params.temperature,
        "top_p": params.top_p, "top_k": params.top_k, "min_p": params.min_p,
        "min_tokens": params.min_tokens, "stop": params.stop or None,
        "stop_token_ids": params.stop_token_ids or None, "ignore_eos": params.ignore_eos,
        "seed": params.seed, "logprobs": 1, "skip_special_tokens": False,
        "include_stop_str_in_output": True,
    }


def sample_from_completion(response: dict[str, Any]) -> Sample:
    """The first choice of a client completion response (with `rlserve_train`)."""
    train = response.get("rlserve_train") or {}
    tokens, logprobs = train.get("response_tokens"), train.get("response_logprobs")
    if tokens is None or logprobs is None or len(tokens) != len(logprobs) or \
            any(lp is None for lp in logprobs):
        return Sample.failed("the server returned no token ids or logprobs for the "
                             "completion (it must support return_token_ids and logprobs)")
    choice = (response.get("choices") or [{}])[0]
    versions = choice.get("weight_versions")
    if not (isinstance(versions, list) and len(versions) == len(tokens)):
        versions = [UNKNOWN_VERSION] * len(tokens)
    return Sample(list(tokens), [float(lp) for lp in logprobs], list(versions),
                  train.get("finish_reason"), choice.get("stop_reason"))


def as_generator(policy: Any, lora_name: str | None = None) -> TokenGenerator:
    """An `Engine`, a sync `rlserve.client.Client` (with a tokenizer), or anything that
    already is a `TokenGenerator`."""
    from rlserve.client import AsyncClient, Client

    if isinstance(policy, Engine):
        return EngineGenerator(policy, lora_name)
    if isinstance(policy, Client):
        return ClientGenerator(policy, lora_name)
    if isinstance(policy, AsyncClient):
        raise TypeError("rollout needs a sync rlserve.client.Client, not an AsyncClient")
    if all(hasattr(policy, name) for name in ("generate", "tokenizer", "max_model_len")):
        return policy
    raise TypeError("rollout needs an Engine, an rlserve.client.Client or a TokenGenerator, "
                    f"got {type(policy).__name__}")


def _merge(total: Sample, delta: CompletionOutput) -> None:
    total.token_ids += delta.token_ids
    total.logprobs += delta.logprobs
    total.weight_versions += delta.weight_versions
    total.finish_reason, total.stop_reason = delta.finish_reason, delta.stop_reason
