"""Which `rlserve.backends` backend a seed-003 config asks for, built with its options.

`rollout.name`: native, huggingface (VERL's "hf"), auto, or vllm / sglang / remote: an
OpenAI-compatible server at `rollout.base_url`, whose admin endpoints (weight updates,
adapters) speak that server's dialect ("remote" is rlserve's). Errors of the backend's
own config are reported under the seed config's keys.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from rlserve._checks import ParamError
from rlserve.backends import BackendConfig, InferenceBackend, create_backend
from rlserve.compat.engine_config import InferenceEngineConfig
from rlserve.config import EngineConfig

KINDS = {"native": "native", "huggingface": "huggingface", "hf": "huggingface", "auto": "auto"}
DIALECTS = {"vllm": "vllm", "sglang": "sglang", "remote": "rlserve"}
# BackendConfig field -> the seed config key that sets it.
SEED_KEYS = {
    "model": "model_path",
    "kind": "rollout.name",
    "dialect": "rollout.name",
    "engine_options": "rollout.engine_kwargs.native",
}
SET_ELSEWHERE = ("model", "dtype", "device", "max_model_len")


def build_backend(config: InferenceEngineConfig) -> InferenceBackend:
    """The backend of `config`, started (a model loaded, or a server client opened)."""
    backend_config = backend_config_of(config)
    try:
        return create_backend(backend_config)
    except ParamError as exc:
        raise _renamed(exc) from None


def backend_config_of(config: InferenceEngineConfig) -> BackendConfig:
    """The `BackendConfig` for `config`; ParamError naming the seed config's key."""
    rollout = config.rollout
    remote = rollout.name in DIALECTS
    values: dict[str, Any] = {
        "kind": "remote" if remote else KINDS[rollout.name],
        "model": config.model_path,
        "device": rollout.device,
        "dtype": rollout.dtype,
        "max_model_len": rollout.max_model_len,
        "base_url": rollout.base_url,
        "api_key": rollout.api_key,
        "admin_key": rollout.admin_key,
        "dialect": DIALECTS.get(rollout.name, "rlserve"),
        # the server loads a remote model; its tokenizer needs no checkpoint code
        "trust_remote_code": config.trust_remote_code and not remote,
    }
    try:
        backend_config = BackendConfig(**values)
        if not remote and backend_config.resolved_kind() == "native":
            backend_config = replace(backend_config, engine_options=_native_options(config))
    except ParamError as exc:
        raise _renamed(exc) from None
    return backend_config


def _native_options(config: InferenceEngineConfig) -> dict[str, Any]:
    rollout = config.rollout
    options = dict(rollout.engine_kwargs.get("native") or {})
    known = {f.name for f in fields(EngineConfig)} - set(SET_ELSEWHERE)
    for name in options:
        if name not in known:
            key = f"rollout.engine_kwargs.native.{name}"
            hint = (
                f"set rollout.{name} (or model_path) instead"
                if name in SET_ELSEWHERE
                else f"the EngineConfig fields are {', '.join(sorted(known))}"
            )
            raise ParamError(key, f"{key}: not an engine option here; {hint}")
    for name in ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching"):
        value = getattr(rollout, name)
        if value is not None:
            options[name] = value
    return options


def _renamed(exc: ParamError) -> ParamError:
    key = SEED_KEYS.get(exc.field, f"rollout.{exc.field}")
    message = str(exc)
    if not message.startswith(key):
        message = f"{key}: {message}"
    return ParamError(key, message)
