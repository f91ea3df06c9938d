"""Seed 001's `InferenceModule(model_name, backend, **backend_kwargs)` as a `BackendConfig`.

The seed's in-process vLLM backend cannot exist here (vLLM's wheel needs a CUDA build of
torch), so "vllm" and "sglang" mean a server of that kind reached over HTTP (`base_url`).
Options of the seed's that belong to such a server are refused with the flag to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlserve._checks import ParamError, check_bool
from rlserve.backends.config import KINDS, BackendConfig

SERVER_KINDS = ("vllm", "sglang")
BACKENDS = (*KINDS, *SERVER_KINDS)
# Seed options that are launch settings of a vLLM / SGLang server, with the server's flag.
_SERVER_FLAGS = {
    "tensor_parallel_size": "--tensor-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
}


@dataclass
class ModuleOptions:
    """What `InferenceModule` builds: the backend's config and the seed options applied to
    the built backend (`gradient_checkpointing`, on a Hugging Face model)."""

    config: BackendConfig
    gradient_checkpointing: bool = False


def module_options(model_name: str | None, backend: str, kwargs: dict[str, Any]) -> ModuleOptions:
    """The options for `InferenceModule(model_name, backend, **kwargs)`; ValueError naming
    the argument that is unknown or cannot be honoured."""
    if backend not in BACKENDS:
        raise ParamError(
            "backend", f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}"
        )
    values = dict(kwargs)
    for taken in ("kind", "model"):
        if taken in values:
            raise ParamError(
                taken, f"{taken}: pass the model as model_name and the kind as backend"
            )
    _check_server_flags(values)
    checkpointing = check_bool(
        "gradient_checkpointing", values.pop("gradient_checkpointing", False)
    )
    kind = backend
    if backend in SERVER_KINDS:
        kind = "remote"
        if values.get("base_url") is None:
            raise ParamError("base_url", _no_in_process_server(backend))
        values.setdefault("dialect", backend)
    config = BackendConfig.from_fields(kind=kind, model=model_name, **values)
    if checkpointing and config.resolved_kind() != "huggingface":
        raise ParamError(
            "gradient_checkpointing",
            "gradient_checkpointing applies to the huggingface backend (a trainable model); "
            f"the {config.resolved_kind()} backend does not train",
        )
    return ModuleOptions(config, checkpointing)


def _check_server_flags(values: dict[str, Any]) -> None:
    for name, flag in _SERVER_FLAGS.items():
        if name in values:
            raise ParamError(
                name,
                f"{name} is a launch setting of a vLLM server, not of this process: start "
                f"`vllm serve MODEL {flag} ...` and pass backend='vllm', base_url='http://HOST:PORT'",
            )


def _no_in_process_server(backend: str) -> str:
    command = "vllm serve MODEL" if backend == "vllm" else "python -m sglang.launch_server"
    return (
        f"backend={backend!r} cannot run in this process ({backend}'s wheel needs a CUDA "
        f"build of torch); start a server (`{command} --port 8000`, or `rlserve serve`) and "
        "pass base_url='http://HOST:8000' to use it over HTTP, or use backend='native' or "
        "'huggingface' in-process"
    )
