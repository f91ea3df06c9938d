"""The remote backend: an OpenAI-compatible server (rlserve, vLLM, SGLang) over HTTP.

Each request is one `/v1/completions` call with a token-id prompt, `return_token_ids` and
logprobs, made by the sync `rlserve.client.Client`; the calls of one `generate` (or
`score`) are sent concurrently, so the server batches them.

The control plane speaks the server's `dialect`:

- rlserve: policy version from `GET /health`; score via `/v1/completions`
  `prompt_logprobs` at any T; weights as a streamed state dict or `POST /update_weights
  {"path"}`; adapters `POST /load_adapter`.
- vllm: `GET /weight_info` (an int-like label, else unknown); score as rlserve's at T = 1;
  weight updates unsupported (vLLM's carry tensors over NCCL / CUDA IPC); adapters
  `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`.
- sglang: `GET /get_weight_version` (an int-like label); score via the native `/generate`
  (`return_logprob`, `logprob_start_len`) at T = 1; weights from a path `POST
  /update_weights_from_disk {"model_path"}`; adapters `POST /load_lora_adapter`.

vLLM reports prompt logprobs of the raw model (T = 1) whatever the request's temperature,
and SGLang's OpenAI server computes no prompt logprobs (only its native `/generate` does,
at T = 1 unless the server was set otherwise), so only the rlserve dialect scores at
T != 1 (rlserve's prompt logprobs follow the request's temperature, DESIGN contract 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, TypeVar

from rlserve._checks import ParamError, check_positive_int, is_int
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
from rlserve.backends.remote_wire import (
    completion_fields,
    int_version,
    prompt_logprob_values,
    sample_from_completion,
    sglang_input_logprobs,
)
from rlserve.engine.call_args import score_params

if TYPE_CHECKING:
    import torch

    from rlserve.backends.config import BackendConfig

DIALECTS = ("rlserve", "vllm", "sglang")
VERSION_ROUTES = {"vllm": "/weight_info", "sglang": "/get_weight_version"}
T = TypeVar("T")
__all__ = ["RemoteBackend", "completion_fields", "sample_from_completion"]


class RemoteBackend:
    """Generates through a server with the sync `Client`, which needs `client.tokenizer`.

    Weight versions come from the server when it reports them per token
    (`weight_versions` on the choice), else are -1 (unknown). `lora_name` is sent as the
    request's `model`. `dialect` picks the admin and scoring endpoints (module docstring).
    """

    name = "remote"

    def __init__(
        self,
        client: Any,
        lora_name: str | None = None,
        max_model_len: int | None = None,
        max_concurrency: int = 64,
        dialect: str = "rlserve",
    ) -> None:
        if dialect not in DIALECTS:
            raise ParamError("dialect", f"dialect must be one of {DIALECTS}, got {dialect!r}")
        self.client = client
        self.model = lora_name
        self.tokenizer = client.tokenizer
        self._max_model_len = max_model_len
        self.max_concurrency = check_positive_int("max_concurrency", max_concurrency)
        self.dialect = dialect
        self._owns_client = False

    @classmethod
    def from_config(cls, config: BackendConfig) -> RemoteBackend:
        """A backend with its own `Client` on `config.base_url` (closed by `close()`); the
        tokenizer is `config.model`'s (None: the bundled model's)."""
        from rlserve.client import Client

        tokenizer = config.model if config.model is not None else str(config.model_path)
        client = Client(
            config.base_url or "",
            api_key=config.api_key,
            admin_key=config.admin_key,
            tokenizer=tokenizer,
        )
        try:
            backend = cls(client, config.lora_name, config.max_model_len, dialect=config.dialect)
        except BaseException:
            client.close()
            raise
        backend._owns_client = True
        return backend

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

    @property
    def policy_version(self) -> int:
        """Read from the server on every call (never cached: another process may update
        it); UNKNOWN_VERSION when the server's label is not an integer."""
        if self.dialect == "rlserve":
            return int_version(self.client.health().get("policy_version"))
        from rlserve.client import APIStatusError

        try:
            reply = self._admin("GET", VERSION_ROUTES[self.dialect])
        except APIStatusError as exc:
            if exc.status_code in (404, 405):  # a server too old to have the route
                return UNKNOWN_VERSION
            raise
        return int_version(reply.get("weight_version") if isinstance(reply, dict) else None)

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        """At most `max_concurrency` calls at a time; a cancelled request not yet sent is
        never sent, one in flight is reported cancelled at once and its reply dropped."""
        cancels = Cancels(on_done, len(requests))
        workers = max(1, min(len(requests), self.max_concurrency))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="rlserve-backend")
        try:
            futures = {pool.submit(self._complete, r): k for k, r in enumerate(requests)}
            report_as_completed(futures, cancels, Future.result)  # _complete catches
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def score(self, pairs: list[ScorePair], temperature: float = 1.0) -> list[list[float]]:
        """Teacher-forced logprobs of each response token (module docstring: how)."""
        checked = list(zip(*split_pairs(pairs), strict=True))
        t = score_params(temperature).logprob_temperature
        if t != 1.0 and self.dialect != "rlserve":
            raise BackendUnsupported(
                self.name,
                f"score at temperature {temperature} in the {self.dialect} dialect",
                f"{self.dialect}'s prompt logprobs are the model's raw logprobs (T = 1); "
                "score at T = 1, or use an rlserve server (dialect='rlserve')",
            )
        score_one = self._score_sglang if self.dialect == "sglang" else self._score_completion
        results = dict(self._concurrently(lambda pair: score_one(pair, t), checked))
        return [results[k] for k in range(len(checked))]

    def logits(self, pairs: list[ScorePair]) -> list[torch.Tensor]:
        raise BackendUnsupported(
            self.name, "return logits", "OpenAI-compatible servers return logprobs, not logits"
        )

    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | str, version: int | None = None
    ) -> int:
        """A state dict (streamed to an rlserve server) or a checkpoint path the SERVER can
        read (rlserve: under its --weights-dir); the server's new policy version."""
        if version is not None and not is_int(version):
            raise ParamError("version", f"version must be an int or None, got {version!r}")
        if not isinstance(weights, (str, Mapping)):
            raise ParamError(
                "weights",
                f"weights must be a state dict or a path string, got {type(weights).__name__}",
            )
        if self.dialect == "rlserve":
            if isinstance(weights, str):
                reply = self.client.update_weights_from_path(weights, version)
            else:
                reply = self.client.update_weights(weights, version)
            return int(reply["policy_version"])
        if self.dialect == "vllm":
            raise BackendUnsupported(
                self.name,
                "update weights in the vllm dialect",
                "vLLM's weight-update routes carry tensors over NCCL or CUDA IPC only (its "
                "data plane is not HTTP); use an rlserve server or vLLM's NCCL weight transfer",
            )
        if not isinstance(weights, str):
            raise BackendUnsupported(
                self.name,
                "update weights from a state dict in the sglang dialect",
                "SGLang takes tensors only over NCCL (update_weights_from_distributed) or "
                "same-host CUDA IPC (update_weights_from_tensor); save them and pass the path",
            )
        body: dict[str, Any] = {"model_path": weights}
        if version is not None:
            body["weight_version"] = str(version)
        reply = self._admin("POST", "/update_weights_from_disk", body)
        if not reply.get("success", False):
            raise RuntimeError(f"the server refused the update: {reply.get('message')}")
        return self.policy_version

    def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT LoRA folder `path` (a path the server reads) as model `name`, and
        run the requests that follow on it (as the native backend does)."""
        for field, value in (("name", name), ("path", path)):
            if not isinstance(value, str) or not value:
                raise ParamError(field, f"{field} must be a non-empty string, got {value!r}")
        if self.dialect == "rlserve":
            self.client.load_adapter(path, name)
        else:
            route = "/v1/load_lora_adapter" if self.dialect == "vllm" else "/load_lora_adapter"
            self._admin("POST", route, {"lora_name": name, "lora_path": path})
        self.model = name

    def close(self) -> None:
        """Close the client if this backend created it (`from_config`); idempotent."""
        if self._owns_client:
            self._owns_client = False
            self.client.close()

    def _complete(self, request: Request) -> Sample:
        prompt, params = request
        fields = completion_fields(params)
        if self.model is not None:
            fields["model"] = self.model
        try:
            response = self.client.completion(prompt, **fields)
        except Exception as exc:  # transport and server errors: not the model's fault
            return Sample.failed(f"{type(exc).__name__}: {exc}")
        return sample_from_completion(response)

    def _score_completion(self, pair: ScorePair, temperature: float) -> list[float]:
        prompt, response = pair
        fields: dict[str, Any] = {"max_tokens": 1, "prompt_logprobs": 0, "temperature": temperature}
        if self.model is not None:
            fields["model"] = self.model
        reply = self.client.completion(prompt + response, **fields)
        choice = (reply.get("choices") or [{}])[0]
        return prompt_logprob_values(choice.get("prompt_logprobs"), prompt + response, len(prompt))

    def _score_sglang(self, pair: ScorePair, temperature: float) -> list[float]:
        prompt, response = pair
        body: dict[str, Any] = {
            "input_ids": prompt + response,
            "sampling_params": {"max_new_tokens": 1, "temperature": temperature},
            "return_logprob": True,
            "logprob_start_len": len(prompt),
        }
        if self.model is not None:
            body["lora_path"] = self.model
        reply = self.client.generate_rl(**body)
        return sglang_input_logprobs(reply, response)

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One admin call of the client (admin key, sent once); its decoded reply."""
        return self.client.admin_request(method, path, body)

    def _concurrently(self, fn: Callable[[Any], T], items: list[Any]) -> Iterable[tuple[int, T]]:
        """(index, fn(item)) as each call finishes, at most `max_concurrency` at a time;
        the first exception is raised once the calls already sent are done."""
        workers = max(1, min(len(items), self.max_concurrency))
        with ThreadPoolExecutor(workers, thread_name_prefix="rlserve-backend") as pool:
            futures = {pool.submit(fn, item): k for k, item in enumerate(items)}
            for future in as_completed(futures):
                yield futures[future], future.result()
