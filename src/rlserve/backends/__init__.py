"""backends layer (see docs/ARCHITECTURE.md): one `InferenceBackend` interface over every
way to run a policy: the native engine (`EngineBackend`) and OpenAI-compatible servers over
HTTP (`RemoteBackend`). `as_backend` picks the implementation for what a caller passed."""

from __future__ import annotations

from typing import Any

from rlserve.backends.base import (
    UNKNOWN_VERSION,
    InferenceBackend,
    OnDone,
    Request,
    Sample,
)
from rlserve.backends.native import EngineBackend
from rlserve.backends.remote import (
    RemoteBackend,
    completion_fields,
    sample_from_completion,
)
from rlserve.engine import Engine

__all__ = [
    "UNKNOWN_VERSION",
    "EngineBackend",
    "InferenceBackend",
    "OnDone",
    "RemoteBackend",
    "Request",
    "Sample",
    "as_backend",
    "completion_fields",
    "sample_from_completion",
]


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
