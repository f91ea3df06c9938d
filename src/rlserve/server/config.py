"""Server settings (the `rlserve serve` flags), validated once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rlserve.server.auth import is_loopback

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LIMITS = (  # the settings that must be positive integers
    "max_batch",
    "max_tokens",
    "max_queue",
    "max_upload_bytes",
    "max_update_bytes",
    "max_request_bytes",
)


@dataclass
class ServerConfig:
    """How the HTTP server runs in front of one Engine.

    `max_batch`: most sequences in one engine step (the engine's `max_num_seqs`).
    `flush_interval_ms`: the longest a request arriving at an idle engine waits for
    companions before the first step starts. `max_tokens`: default and upper limit of a
    request's `max_tokens`. `max_queue`: sequences allowed to wait for a batch slot (a
    request counts each prompt `n` times); more are refused with 429. `served_model_name`:
    the id of the base model in `/v1/models`.
    `adapter_path`: a PEFT LoRA adapter loaded at start-up under `adapter_name` (default:
    its folder's name); requests that name no model use it. `tool_call_parser`: the
    `rlserve.tools` format used to turn chat replies into `tool_calls` when a request
    offers tools (None: never parse). `admin_key`: the admin routes (`/update_weights`,
    adapters, pause/resume/abort, `/policy_version`) require `Authorization: Bearer
    <admin_key>`; without it they require the `api_key`, and with neither key they only
    answer clients on a loopback address (403 for others). Serving on a non-loopback `host`
    with neither key is refused (ValueError) unless `allow_open_admin`, which opens the
    admin routes to every client: anyone who reaches the port could replace the weights.
    `shutdown_grace_s`: on SIGTERM/SIGINT new requests get 503 and running ones may finish
    for this long; then they are aborted (`finish_reason` "abort", partial output kept).
    `weights_dir`: the only folder path-based updates and adapters are read from (None:
    path loading is refused). `max_upload_bytes` / `max_update_bytes`: body size limits of
    `/upload_adapter` and of a streamed `/update_weights`. `max_request_bytes`: body size
    limit of the JSON bodies (`/v1/*`, `/generate`, the admin routes; more gets a 413).
    `trust_request_chat_template`: allow a chat request's own `chat_template` (refused by
    default, as vLLM does: a template is code that runs in the server).
    """

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64
    flush_interval_ms: float = 10.0
    max_tokens: int = 512
    max_queue: int = 1024
    max_logprobs: int = 20
    adapter_path: str | None = None
    adapter_name: str | None = None
    trust_remote_code: bool = False
    log_level: str = "INFO"
    api_key: str | None = None
    served_model_name: str | None = None
    tool_call_parser: str | None = "hermes"
    admin_key: str | None = None
    allow_open_admin: bool = False
    shutdown_grace_s: float = 10.0
    weights_dir: str | None = None
    max_upload_bytes: int = 256 * 2**20
    max_update_bytes: int = 16 * 2**30
    max_request_bytes: int = 32 * 2**20
    trust_request_chat_template: bool = False

    def __post_init__(self) -> None:
        self._check_limits()
        self._check_serving()
        self._check_admin_access()
        self._check_paths()

    def _check_limits(self) -> None:
        for name in LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_logprobs, bool) or not isinstance(self.max_logprobs, int):
            raise ValueError(f"max_logprobs must be an integer, got {self.max_logprobs!r}")
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
        if not isinstance(self.flush_interval_ms, (int, float)) or self.flush_interval_ms < 0:
            raise ValueError(f"flush_interval_ms must be >= 0, got {self.flush_interval_ms!r}")
        grace = self.shutdown_grace_s
        if (
            isinstance(grace, bool)
            or not isinstance(grace, (int, float))
            or not 0 <= grace < float("inf")
        ):
            raise ValueError(f"shutdown_grace_s must be a finite number >= 0, got {grace!r}")

    def _check_serving(self) -> None:
        self.log_level = str(self.log_level).upper()
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {self.port!r}")
        if not self.host:
            raise ValueError("host must be a non-empty address")
        if self.tool_call_parser is not None:
            from rlserve.tools import PARSERS

            if self.tool_call_parser not in PARSERS:
                raise ValueError(
                    f"tool_call_parser must be one of {sorted(PARSERS)} or None, "
                    f"got {self.tool_call_parser!r}"
                )
        if not isinstance(self.trust_request_chat_template, bool):
            raise ValueError("trust_request_chat_template must be a bool")

    def _check_admin_access(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be non-empty when given")
        if self.admin_key is not None and not self.admin_key:
            raise ValueError("admin_key must be non-empty when given")
        if not (self.admin_key or self.api_key or self.allow_open_admin or is_loopback(self.host)):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines but the admin routes "
                "(weight updates, adapters, pause/abort) have no key: set --admin-key (or "
                "--api-key), or pass --allow-open-admin to leave them open to every client"
            )

    def _check_paths(self) -> None:
        if self.adapter_path and not self.adapter_name:
            self.adapter_name = Path(self.adapter_path).expanduser().resolve().name or "adapter"
        if self.weights_dir is not None and not Path(self.weights_dir).is_dir():
            raise ValueError(f"weights_dir {self.weights_dir!r} is not a folder")

    @property
    def flush_interval_s(self) -> float:
        return self.flush_interval_ms / 1000.0

    @property
    def logging_level(self) -> int:
        return getattr(logging, self.log_level)
