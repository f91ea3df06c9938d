"""The remote backend: an OpenAI-compatible server (rlserve, vLLM, SGLang) over HTTP.

Each request is one `/v1/completions` call with a token-id prompt, `return_token_ids` and
logprobs, made by the sync `rlserve.client.Client`; the calls of one `generate` are sent
concurrently, so the server batches them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from rlserve._checks import check_positive_int, is_int
from rlserve.backends.base import UNKNOWN_VERSION, OnDone, Request, Sample
from rlserve.sampling_params import SamplingParams


class RemoteBackend:
    """Generates through a server with the sync `Client`, which needs `client.tokenizer`.

    Weight versions come from the server when it reports them per token
    (`weight_versions` on the choice), else are -1 (unknown). `lora_name` is sent as the
    request's `model`.
    """

    def __init__(
        self,
        client: Any,
        lora_name: str | None = None,
        max_model_len: int | None = None,
        max_concurrency: int = 64,
    ) -> None:
        self.client = client
        self.model = lora_name
        self.tokenizer = client.tokenizer
        self._max_model_len = max_model_len
        self.max_concurrency = check_positive_int("max_concurrency", max_concurrency)

    @property
    def max_model_len(self) -> int | None:
        """From the server's model card (`/v1/models`) unless given; None if unknown."""
        if self._max_model_len is None:
            try:
                cards = self.client.models().get("data") or [{}]
            except Exception:  # no card, no limit: the request errors will tell
                return None
            value = cards[0].get("max_model_len")
            self._max_model_len = value if is_int(value) else None
        return self._max_model_len

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        workers = max(1, min(len(requests), self.max_concurrency))
        with ThreadPoolExecutor(workers, thread_name_prefix="rlserve-backend") as pool:
            futures = {
                pool.submit(self._complete, prompt, params): k
                for k, (prompt, params) in enumerate(requests)
            }
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
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "min_tokens": params.min_tokens,
        "stop": params.stop or None,
        "stop_token_ids": params.stop_token_ids or None,
        "ignore_eos": params.ignore_eos,
        "seed": params.seed,
        "logprobs": 1,
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
    }


def sample_from_completion(response: dict[str, Any]) -> Sample:
    """The first choice of a client completion response (with `rlserve_train`)."""
    train = response.get("rlserve_train") or {}
    tokens, logprobs = train.get("response_tokens"), train.get("response_logprobs")
    if (
        tokens is None
        or logprobs is None
        or len(tokens) != len(logprobs)
        or any(lp is None for lp in logprobs)
    ):
        return Sample.failed(
            "the server returned no token ids or logprobs for the completion "
            "(it must support return_token_ids and logprobs)"
        )
    choice = (response.get("choices") or [{}])[0]
    versions = choice.get("weight_versions")
    if not (isinstance(versions, list) and len(versions) == len(tokens)):
        versions = [UNKNOWN_VERSION] * len(tokens)
    return Sample(
        list(tokens),
        [float(lp) for lp in logprobs],
        list(versions),
        train.get("finish_reason"),
        choice.get("stop_reason"),
    )
