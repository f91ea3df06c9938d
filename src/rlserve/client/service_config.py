"""The configuration of seed 000's (NexRL's) inference service clients.

NexRL hands a client a config (a dict or an omegaconf `DictConfig`) with an
`inference_service` section and a top-level `temperature`:

    {"inference_service": {"base_url": ..., "model": ..., "max_tokens": 2048, ...},
     "temperature": 0.7}

Other top-level keys are ignored: NexRL passes a whole section of its run config (a rollout
worker's), which has many. Every key inside `inference_service` must be one NexRL knows
(`SERVICE_KEYS`); another is a `ParamError` naming it, so a typo never goes unnoticed.
omegaconf is imported only when a `DictConfig` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rlserve._checks import ParamError, check_bool, check_int, check_number

SECTION = "inference_service"
# `backend` names the serving system: vllm / sglang / openai (any OpenAI-compatible
# server, rlserve included) go over HTTP, tinker / weaver through a service holder.
HTTP_BACKENDS = ("openai", "vllm", "sglang", "rlserve")
HOLDER_BACKENDS = ("tinker", "weaver")
# Keys of NexRL's run configs that describe the deployment, not the client: accepted, unused.
DEPLOYMENT_KEYS = ("weight_type", "model_path", "resource")


@dataclass
class InferenceServiceConfig:
    """One client's settings, validated (a bad value is a `ParamError` naming its key).

    `tokenizer` (None: `model`) is what `hf_tokenizer` loads. `model_tag` names the model
    in the weight-sync controller; `identifier` is NexRL's newer name for it and wins when
    both are given. `parse_tool_call_arguments`: `apply_chat_template` turns JSON-string
    tool-call arguments into dicts first (templates that iterate over them need that).
    `max_tokens` None lets the server choose. `temperature` is the top-level key.
    """

    base_url: str | None = None
    api_key: str | None = "EMPTY"
    model: str | None = None
    tokenizer: str | None = None
    backend: str = "openai"
    max_tokens: int | None = None
    max_retries: int = 10
    freeze_for_weight_sync: bool = True
    model_tag: str = "default"
    identifier: str | None = None
    parse_tool_call_arguments: bool = False
    temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("base_url", "api_key", "model", "tokenizer", "identifier"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ParamError(_key(name), f"{_key(name)} must be a string, got {value!r}")
        if self.backend not in HTTP_BACKENDS + HOLDER_BACKENDS:
            choices = ", ".join(HTTP_BACKENDS + HOLDER_BACKENDS)
            raise ParamError(
                _key("backend"), f"{_key('backend')} must be one of {choices}, got {self.backend!r}"
            )
        if not isinstance(self.model_tag, str) or not self.model_tag:
            raise ParamError(_key("model_tag"), f"{_key('model_tag')} must be a non-empty string")
        if self.max_tokens is not None:
            check_int(_key("max_tokens"), self.max_tokens, minimum=1)
        check_int(_key("max_retries"), self.max_retries, minimum=0)
        check_bool(_key("freeze_for_weight_sync"), self.freeze_for_weight_sync)
        check_bool(_key("parse_tool_call_arguments"), self.parse_tool_call_arguments)
        check_number("temperature", self.temperature, finite=True)
        if self.temperature < 0:
            raise ParamError("temperature", f"temperature must be >= 0, got {self.temperature}")

    @property
    def tag(self) -> str:
        """The weight-sync model tag: `identifier` if given, else `model_tag`."""
        return self.identifier or self.model_tag

    @property
    def tokenizer_path(self) -> str | None:
        """What the client's tokenizer is loaded from: `tokenizer`, else `model`."""
        return self.tokenizer or self.model

    @property
    def http_base_url(self) -> str:
        """`base_url` with a scheme (NexRL accepts `host:port`); required over HTTP."""
        if not self.base_url:
            raise ParamError(_key("base_url"), f"{_key('base_url')} is required")
        return self.base_url if "://" in self.base_url else f"http://{self.base_url}"

    def require_model(self) -> str:
        if not self.model:
            raise ParamError(_key("model"), f"{_key('model')} is required")
        return self.model


SERVICE_KEYS = tuple(f.name for f in fields(InferenceServiceConfig) if f.name != "temperature")


def _key(name: str) -> str:
    """A key's name in errors: its dotted path in the seed's config."""
    return name if name == "temperature" else f"{SECTION}.{name}"


def load_service_config(config: Any) -> InferenceServiceConfig:
    """An `InferenceServiceConfig` from one (returned as is), a dict or a `DictConfig`."""
    if isinstance(config, InferenceServiceConfig):
        return config
    data = plain_config(config)
    section = data.get(SECTION)
    if not isinstance(section, Mapping):
        raise ParamError(SECTION, f"the config needs an {SECTION!r} section (a mapping)")
    unknown = [k for k in section if k not in SERVICE_KEYS and k not in DEPLOYMENT_KEYS]
    if unknown:
        raise ParamError(
            _key(str(unknown[0])),
            f"unknown key {_key(str(unknown[0]))!r}; known keys: {', '.join(SERVICE_KEYS)}",
        )
    values = {k: v for k, v in section.items() if k in SERVICE_KEYS and v is not None}
    if data.get("temperature") is not None:
        values["temperature"] = data["temperature"]
    return InferenceServiceConfig(**values)


def plain_config(config: Any) -> dict[str, Any]:
    """`config` as plain dicts: a `DictConfig` is resolved (interpolations filled in)."""
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf  # only when the caller already uses omegaconf

        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping):
        raise ParamError(
            "config", f"config must be a dict or a DictConfig, got a {type(config).__name__}"
        )
    return dict(config)
