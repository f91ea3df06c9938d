"""`BackendConfig`: which backend to build and what it needs, validated once.

Torch-free: reading and checking a config loads no model (`factory.create_backend` does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rlserve._checks import ParamError, check_bool, check_positive_int
from rlserve.config import BUNDLED_MODEL

KINDS = ("native", "huggingface", "remote", "tinker", "auto")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DIALECTS = ("rlserve", "vllm", "sglang")
# The model_type values of config.json that the native engine loads.
NATIVE_MODEL_TYPES = ("llama", "qwen2", "qwen3")


@dataclass
class BackendConfig:
    """Everything `create_backend` needs. `model=None` is the bundled model.

    `kind` "auto" is native for a checkpoint whose config.json `model_type` the native
    engine loads (llama, qwen2, qwen3), else huggingface. `device` / `dtype` "auto" pick CUDA
    when available and the checkpoint's own dtype. `base_url`, `api_key`, `admin_key` and
    `dialect` (the admin endpoints' dialect: rlserve, vllm or sglang) are for "remote";
    `sampling_client` (a tinker `SamplingClient`) or `service` (a service holder with
    `sample_from_prompt`) for "tinker"; `engine_options` are extra `EngineConfig` fields for
    "native"; `lora_name` is the adapter requests run on (None: the base model);
    `trust_remote_code` lets a local backend run the checkpoint's own model code.
    """

    kind: str = "auto"
    model: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_model_len: int | None = None
    base_url: str | None = None
    api_key: str | None = None
    admin_key: str | None = None
    dialect: str = "rlserve"
    sampling_client: Any = None
    service: Any = None
    lora_name: str | None = None
    trust_remote_code: bool = False
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("dialect", self.dialect, DIALECTS)
        if self.model is not None and not isinstance(self.model, str):
            raise ParamError("model", f"model must be a path string or None, got {self.model!r}")
        if self.max_model_len is not None:
            check_positive_int("max_model_len", self.max_model_len)
        for name in ("base_url", "api_key", "admin_key", "lora_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ParamError(name, f"{name} must be a non-empty string or None, got {value!r}")
        check_bool("trust_remote_code", self.trust_remote_code)
        if not isinstance(self.engine_options, dict):
            raise ParamError(
                "engine_options",
                "engine_options must be a dict of EngineConfig fields, "
                f"got {self.engine_options!r}",
            )
        self._check_kind_needs()

    def _check_kind_needs(self) -> None:
        if self.kind == "remote" and self.base_url is None:
            raise ParamError("base_url", "the remote backend needs base_url (the server's URL)")
        if self.kind == "tinker" and self.sampling_client is None and self.service is None:
            raise ParamError(
                "sampling_client",
                "the tinker backend needs sampling_client (a tinker SamplingClient) or "
                "service (a service holder with sample_from_prompt)",
            )
        if self.kind in ("native", "huggingface", "auto") and self.model is not None:
            if not Path(self.model).expanduser().is_dir():
                raise ParamError(
                    "model",
                    f"model path {self.model!r} is not a local checkpoint folder "
                    "(hub names are not downloaded: pass a folder)",
                )

    @property
    def model_path(self) -> Path:
        """The checkpoint folder: `model`, or the bundled model."""
        return BUNDLED_MODEL if self.model is None else Path(self.model).expanduser()

    def resolved_kind(self) -> str:
        """`kind`, with "auto" decided from the checkpoint's config.json `model_type`."""
        if self.kind != "auto":
            return self.kind
        return "native" if model_type(self.model_path) in NATIVE_MODEL_TYPES else "huggingface"

    @classmethod
    def from_fields(cls, kind: str | None = None, **values: Any) -> BackendConfig:
        """A config from keyword fields; an unknown keyword is a ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParamError(
                unknown[0],
                f"unknown backend option {unknown[0]!r}; "
                f"the options are {', '.join(sorted(known))}",
            )
        return cls(**values) if kind is None else cls(kind=kind, **values)


def model_type(path: Path) -> str | None:
    """config.json's `model_type` of checkpoint folder `path`; None if it has none."""
    try:
        value = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParamError(name, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def resolved_device(device: str) -> str:
    """`device`, with "auto" as "cuda" when CUDA is available, else "cpu"."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolved_dtype(dtype: str, path: Path) -> str:
    """`dtype`, with "auto" as the checkpoint's own floating dtype (float32 if unstated)."""
    if dtype != "auto":
        return dtype
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    stated = config.get("torch_dtype") or config.get("dtype")
    return stated if stated in ("float32", "bfloat16", "float16") else "float32"
