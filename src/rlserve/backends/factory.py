"""`create_backend`: a `BackendConfig` (or a kind and its fields) to an `InferenceBackend`.

Each kind's module is imported only when that kind is built, so asking for the remote
backend never loads `transformers` models and vice versa.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlserve.backends.base import InferenceBackend
from rlserve.backends.config import BackendConfig


def create_backend(config: BackendConfig | str = "auto", **fields: Any) -> InferenceBackend:
    """The backend `config` describes. A string is the kind, and `fields` fill the rest of
    a `BackendConfig` (an unknown keyword is a ValueError naming it); with a config,
    `fields` override its values."""
    if isinstance(config, str):
        config = BackendConfig.from_fields(kind=config, **fields)
    elif isinstance(config, BackendConfig):
        if fields:
            merged = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
            config = BackendConfig.from_fields(**{**merged, **fields})
    else:
        raise ValueError(
            f"config must be a BackendConfig or a backend kind string, got {type(config).__name__}"
        )
    kind = config.resolved_kind()
    return _BUILDERS[kind](config)


def _native(config: BackendConfig) -> InferenceBackend:
    from rlserve.backends.native import EngineBackend

    return EngineBackend.from_config(config)


def _huggingface(config: BackendConfig) -> InferenceBackend:
    from rlserve.backends.huggingface import HuggingFaceBackend

    return HuggingFaceBackend.from_config(config)


def _remote(config: BackendConfig) -> InferenceBackend:
    from rlserve.backends.remote import RemoteBackend

    return RemoteBackend.from_config(config)


def _tinker(config: BackendConfig) -> InferenceBackend:
    """Over `config.sampling_client` (a tinker SamplingClient) or else `config.service` (a
    service holder), with the tokenizer of `config.model` (None: the bundled model)."""
    from transformers import AutoTokenizer

    from rlserve.backends.tinker import ServiceBackend, TinkerBackend

    tokenizer = AutoTokenizer.from_pretrained(str(config.model_path))
    if config.sampling_client is not None:
        return TinkerBackend(config.sampling_client, tokenizer, config.max_model_len)
    return ServiceBackend(config.service, tokenizer)


_BUILDERS = {
    "native": _native,
    "huggingface": _huggingface,
    "remote": _remote,
    "tinker": _tinker,
}
