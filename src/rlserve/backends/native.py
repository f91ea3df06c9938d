"""The native backend: an in-process `Engine`, driven step by step on the calling thread."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from rlserve.backends.base import (
    CANCEL_REASON,
    Cancels,
    OnDone,
    Request,
    Sample,
    ScorePair,
    cancelled_sample,
    split_pairs,
)
from rlserve.backends.config import BackendConfig, resolved_device, resolved_dtype
from rlserve.engine import Engine
from rlserve.outputs import CompletionOutput


class EngineBackend:
    """Adds every request to `engine`, then steps it until all of them finish. The backend
    owns the engine meanwhile: it must have no other requests in flight. Requests run on
    adapter `lora_name` (None: the base model); `load_adapter` switches them to the one it
    loads."""

    name = "native"

    def __init__(self, engine: Engine, lora_name: str | None = None) -> None:
        if engine.has_unfinished_requests():
            raise RuntimeError(
                "the backend drives the engine itself: finish or abort the requests "
                "already in it first"
            )
        self.engine = engine
        self.lora_name = lora_name
        self.tokenizer = engine.tokenizer
        self.max_model_len: int | None = engine.max_model_len
        self.closed = False
        self._owns_engine = False

    @classmethod
    def from_config(cls, config: BackendConfig) -> EngineBackend:
        """An engine on `config.model` (None: bundled), dtype, device, max_model_len and
        `engine_options` (further `EngineConfig` fields)."""
        options = dict(config.engine_options)
        for name in ("model", "dtype", "device", "max_model_len", "trust_remote_code"):
            if name in options:
                raise ValueError(f"engine_options: set {name!r} on the BackendConfig itself")
        engine = Engine(
            config.model,
            dtype=resolved_dtype(config.dtype, config.model_path),
            device=resolved_device(config.device),
            max_model_len=config.max_model_len,
            trust_remote_code=config.trust_remote_code,
            **options,
        )
        backend = cls(engine, config.lora_name)
        backend._owns_engine = True
        return backend

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        """Every request in the engine at once; a cancelled one is aborted there (its KV
        blocks freed at once) and reported with what it had sampled."""
        engine = self._open_engine()
        if engine.paused is not None:
            raise RuntimeError(f"the engine is paused ({engine.paused!r}); call resume() first")
        cancels = Cancels(on_done, len(requests))
        pending: dict[str, int] = {}  # request id -> index in `requests`
        ids: dict[int, str] = {}  # index -> request id, while it runs
        totals: dict[int, CompletionOutput] = {}
        try:
            for k, (prompt, params) in enumerate(requests):
                if cancels.asked(k):  # cancelled before it was added
                    cancels.report(k, cancelled_sample())
                    continue
                try:
                    request_id = engine.add_request(prompt, params, lora_name=self.lora_name)
                except ValueError as exc:  # this request only: the others go on
                    cancels.report(k, Sample.failed(f"request rejected: {exc}"))
                    continue
                pending[request_id], ids[k], totals[k] = k, request_id, CompletionOutput(index=0)
            while pending:
                cancels.poll()
                for k in cancels.take():
                    if k in ids:
                        engine.abort(ids[k], CANCEL_REASON)
                for delta in engine.step():
                    k = pending.get(delta.request_id)
                    if k is None:
                        continue
                    for out in delta.outputs:
                        totals[k].extend(out)
                    if delta.finished:
                        del pending[delta.request_id], ids[k]
                        total = totals.pop(k)
                        if delta.error is not None:  # broke inside the engine
                            cancels.report(k, Sample.failed(delta.error))
                        else:
                            cancels.report(k, Sample.from_output(total))
        except BaseException:
            for request_id in pending:
                engine.abort(request_id)
            engine.step()  # reports (and forgets) the aborted requests; frees their KV
            raise

    def score(self, pairs: list[ScorePair], temperature: float = 1.0) -> list[list[float]]:
        prompts, responses = split_pairs(pairs)
        return self._open_engine().score(prompts, responses, temperature, self.lora_name)

    def logits(self, pairs: list[ScorePair]) -> list[torch.Tensor]:
        """The engine's fp32 logits (computed without autograd: the native engine serves,
        it does not train)."""
        engine = self._open_engine()
        prompts, responses = split_pairs(pairs)
        rows = []
        for prompt, response in zip(prompts, responses, strict=True):
            every = engine.logits(prompt + response, self.lora_name)
            rows.append(every[len(prompt) - 1 : len(prompt) + len(response) - 1])
        return rows

    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | str, version: int | None = None
    ) -> int:
        """A state dict (Hugging Face names) or a safetensors file or folder, checked
        whole before anything is written."""
        if not isinstance(weights, (Mapping, str, Path)):
            raise ValueError(
                f"weights must be a state dict or a safetensors path, got {type(weights).__name__}"
            )
        return self._open_engine().update_weights(weights, version)

    def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT adapter at `path` as `name` and run the requests that follow on it:
        a new policy (the version moves, so results cached under the old one go stale)."""
        self._open_engine().load_lora(name, path, new_policy=True)
        self.lora_name = name

    def close(self) -> None:
        """Refuse further calls; an engine this backend built (`from_config`) is dropped so
        its memory can be freed, one passed in stays usable by its owner."""
        if self.closed:
            return
        self.closed = True
        if self._owns_engine:
            device = self.engine.device
            del self.engine
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _open_engine(self) -> Engine:
        if self.closed:
            raise RuntimeError("the native backend is closed")
        return self.engine
