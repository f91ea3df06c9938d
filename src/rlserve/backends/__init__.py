"""backends layer (see docs/ARCHITECTURE.md): one `InferenceBackend` interface over every
way to run a policy: the native engine (`EngineBackend`), Hugging Face `transformers`
(`HuggingFaceBackend`, imported on first use), OpenAI-compatible servers over HTTP
(`RemoteBackend`: rlserve, vLLM, SGLang) and Tinker. `create_backend` builds one from a
`BackendConfig` (or a kind word); `as_backend` wraps what a caller already has; `complete`
takes text, token ids or messages on any of them.

An in-process vLLM or SGLang backend is not offered: their wheels need a CUDA build of
torch. Serve them and use the remote backend (`dialect="vllm"` / `"sglang"`)."""

from __future__ import annotations

from typing import Any

from rlserve.backends.base import (
    UNKNOWN_VERSION,
    BackendUnsupported,
    InferenceBackend,
    OnDone,
    Request,
    Sample,
    ScorePair,
)
from rlserve.backends.complete import Completion, Prompt, complete, prompt_token_ids
from rlserve.backends.config import BackendConfig
from rlserve.backends.factory import create_backend
from rlserve.backends.native import EngineBackend
from rlserve.backends.remote import (
    RemoteBackend,
    completion_fields,
    sample_from_completion,
)
from rlserve.engine import Engine

__all__ = [
    "UNKNOWN_VERSION",
    "BackendConfig",
    "BackendUnsupported",
    "Completion",
    "EngineBackend",
    "HuggingFaceBackend",
    "InferenceBackend",
    "OnDone",
    "Prompt",
    "RemoteBackend",
    "Request",
    "Sample",
    "ScorePair",
    "as_backend",
    "complete",
    "completion_fields",
    "create_backend",
    "prompt_token_ids",
    "sample_from_completion",
]


def __getattr__(name: str) -> Any:
    if name == "HuggingFaceBackend":  # loads transformers' model code: only when asked for
        from rlserve.backends.huggingface import HuggingFaceBackend

        return HuggingFaceBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_backend(policy: Any, lora_name: str | None = None) -> InferenceBackend:
    """The backend for `policy`: an `Engine`, a sync `rlserve.client.Client` (with a
    tokenizer), or anything that already is an `InferenceBackend` (returned as it is)."""
    from rlserve.client import AsyncClient, Client  # HTTP only: loaded when first needed

    if isinstance(policy, Engine):
        return EngineBackend(policy, lora_name)
    if isinstance(policy, Client):
        return RemoteBackend(policy, lora_name)
    if isinstance(policy, AsyncClient):
        raise TypeError("a backend needs a sync rlserve.client.Client, not an AsyncClient")
    # hasattr, not isinstance(policy, InferenceBackend): Python 3.12 checks protocol
    # members statically, which misses attributes that a proxy serves from __getattr__.
    if all(hasattr(policy, name) for name in ("generate", "tokenizer", "max_model_len")):
        return policy
    raise TypeError(
        "a policy must be an Engine, an rlserve.client.Client or an InferenceBackend "
        f"(tokenizer, max_model_len, generate), got {type(policy).__name__}"
    )
