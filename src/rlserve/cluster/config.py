"""`ClusterConfig`: what a cluster of replicas is made of, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rlserve._checks import ParamError, check_int, check_number

ROUTING_POLICIES = ("least_outstanding", "session", "prefix")


@dataclass
class ClusterConfig:
    """N Ray replicas of one checkpoint plus any external OpenAI-compatible servers.

    `model=None` is the bundled model. `ray_address=None` starts Ray locally; "auto" or
    "ray://host:port" joins a running cluster. `engine_options` are `EngineConfig` fields
    for every Ray replica, `server_options` its `ServerConfig` fields (e.g. `weights_dir`,
    `max_tokens`; not model/host/port/keys, which the cluster sets). `request_retries` is
    how many other replicas a request that has streamed nothing is tried on.
    """

    model: str | None = None
    num_replicas: int = 0
    backend_urls: tuple[str, ...] = ()
    ray_address: str | None = None
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0
    engine_options: dict[str, Any] = field(default_factory=dict)
    server_options: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    admin_key: str | None = None
    routing: str = "least_outstanding"
    health_interval_s: float = 2.0
    request_retries: int = 2
    start_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        check_int("num_replicas", self.num_replicas, minimum=0)
        if isinstance(self.backend_urls, str):
            raise ParamError("backend_urls", "backend_urls must be a list of URLs, not a str")
        self.backend_urls = tuple(_check_url(u) for u in self.backend_urls)
        if self.num_replicas + len(self.backend_urls) < 1:
            raise ParamError(
                "num_replicas", "a cluster needs num_replicas >= 1 or at least one backend_url"
            )
        if len(set(self.backend_urls)) != len(self.backend_urls):
            raise ParamError("backend_urls", "backend_urls lists one URL twice")
        _check_optional_str("model", self.model)
        _check_optional_str("ray_address", self.ray_address)
        _check_optional_str("api_key", self.api_key)
        _check_optional_str("admin_key", self.admin_key)
        check_number("num_cpus_per_replica", self.num_cpus_per_replica, finite=True)
        if self.num_cpus_per_replica < 0:
            raise ParamError("num_cpus_per_replica", "num_cpus_per_replica must be >= 0")
        check_number("num_gpus_per_replica", self.num_gpus_per_replica, finite=True)
        if self.num_gpus_per_replica < 0:
            raise ParamError("num_gpus_per_replica", "num_gpus_per_replica must be >= 0")
        _check_options("engine_options", self.engine_options, _engine_fields())
        if self.num_replicas:
            _check_engine_config(self.model, self.engine_options)
        _check_options("server_options", self.server_options, _server_fields())
        if self.routing not in ROUTING_POLICIES:
            raise ParamError(
                "routing", f"routing must be one of {list(ROUTING_POLICIES)}, got {self.routing!r}"
            )
        check_number("health_interval_s", self.health_interval_s, finite=True, positive=True)
        check_int("request_retries", self.request_retries, minimum=0)
        check_number("start_timeout_s", self.start_timeout_s, finite=True, positive=True)


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise ParamError("backend_urls", f"backend_urls entries must be strings, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParamError(
            "backend_urls", f"backend_urls entry {url!r} is not an http(s)://host:port URL"
        )
    return url.rstrip("/")


def _check_optional_str(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ParamError(name, f"{name} must be a non-empty string or None, got {value!r}")


def _engine_fields() -> set[str]:
    from rlserve.config import EngineConfig

    return {f.name for f in dataclasses.fields(EngineConfig)} - {"model"}


def _server_fields() -> set[str]:
    from rlserve.server.config import ServerConfig

    cluster_set = {"model", "host", "port", "api_key", "admin_key"}
    return {f.name for f in dataclasses.fields(ServerConfig)} - cluster_set


def _check_engine_config(model: str | None, options: dict[str, Any]) -> None:
    """Refuse here what every Ray replica would refuse when it builds its engine."""
    from rlserve.config import EngineConfig

    if model is not None and not Path(model).expanduser().is_dir():
        raise ParamError("model", f"model {model!r} is not a local checkpoint folder")
    try:
        EngineConfig(model=model, **options)
    except ValueError as exc:
        raise ParamError("engine_options", f"engine_options: {exc}") from exc


def _check_options(name: str, options: object, known: set[str]) -> None:
    if not isinstance(options, dict):
        raise ParamError(name, f"{name} must be a dict, got {options!r}")
    unknown = sorted(set(options) - known)
    if unknown:
        raise ParamError(
            name,
            f"{name} has fields the cluster does not pass on: {unknown} "
            f"(model, keys, host and port are ClusterConfig's); known: {sorted(known)}",
        )
