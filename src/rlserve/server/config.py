"""Server settings (the `rlserve serve` flags), validated once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class ServerConfig:
    """How the HTTP server runs in front of one Engine.

    `max_batch`: most sequences in one engine step (the engine's `max_num_seqs`).
    `flush_interval_ms`: the longest a request arriving at an idle engine waits for
    companions before the first step starts. `max_tokens`: default and upper limit of a
    request's `max_tokens`. `max_queue`: requests allowed to wait for a batch slot; more
    are refused with 429. `served_model_name`: the id of the base model in `/v1/models`.
    `adapter_path`: a PEFT LoRA adapter loaded at start-up under `adapter_name` (default:
    its folder's name); requests that name no model use it. `tool_call_parser`: the
    `rlserve.tools` format used to turn chat replies into `tool_calls` when a request
    offers tools (None: never parse). `admin_key`: when set, the admin routes
    (`/update_weights`, adapters, pause/resume/abort, `/policy_version`) require
    `Authorization: Bearer <admin_key>`; when unset they are open (bind to 127.0.0.1).
    `weights_dir`: the only folder path-based updates and adapters are read from (None:
    path loading is refused). `max_upload_bytes` / `max_update_bytes`: body size limits of
    `/upload_adapter` and of a streamed `/update_weights`.
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
    weights_dir: str | None = None
    max_upload_bytes: int = 256 * 2**20
    max_update_bytes: int = 16 * 2**30

    def __post_init__(self) -> None:
        self.log_level = str(self.log_level).upper()
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {self.port!r}")
        for name in ("max_batch", "max_tokens", "max_queue", "max_upload_bytes",
                     "max_update_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_logprobs, bool) or not isinstance(self.max_logprobs, int):
            raise ValueError(f"max_logprobs must be an integer, got {self.max_logprobs!r}")
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
        if not isinstance(self.flush_interval_ms, (int, float)) or self.flush_interval_ms < 0:
            raise ValueError(f"flush_interval_ms must be >= 0, got {self.flush_interval_ms!r}")
        if not self.host:
            raise ValueError("host must be a non-empty address")
        if self.tool_call_parser is not None:
            from rlserve.tools import PARSERS

            if self.tool_call_parser not in PARSERS:
                raise ValueError(
                    f"tool_call_parser must be one of {sorted(PARSERS)} or None, "
                    f"got {self.tool_call_parser!r}"
                )
        if self.adapter_path and not self.adapter_name:
            self.adapter_name = Path(self.adapter_path).expanduser().resolve().name or "adapter"
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be non-empty when given")
        if self.admin_key is not None and not self.admin_key:
            raise ValueError("admin_key must be non-empty when given")
        if self.weights_dir is not None and not Path(self.weights_dir).is_dir():
            raise ValueError(f"weights_dir {self.weights_dir!r} is not a folder")

    @property
    def flush_interval_s(self) -> float:
        return self.flush_interval_ms / 1000.0

    @property
    def logging_level(self) -> int:
        return getattr(logging, self.log_level)
