"""Server settings (the `rlserve serve` flags), validated once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rlserve._checks import check_bool, check_int, check_positive_int, is_number
from rlserve.server.auth import is_loopback

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LIMITS = (  # the settings that must be positive integers
    "max_batch",
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
    companions before the first step starts. `max_tokens`: an optional cap on a request's
    `max_tokens` (more is a 400) and the default of requests that name none (None: no cap,
    a request may ask for the rest of the context and chat requests without max_tokens get
    it, as vLLM does). `max_queue`: sequences allowed to wait for a batch slot (a
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

    model: str | None = field(
        default=None,
        metadata={"help": "local Hugging Face checkpoint (default: the bundled model)"},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "bind address"})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on"})
    max_batch: int = field(default=64, metadata={"help": "most sequences per engine step"})
    flush_interval_ms: float = field(
        default=10.0,
        metadata={"help": "how long a request reaching an idle engine waits for companions"},
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "cap on a request's max_tokens and the default when it names none "
            "(default: no cap; a request may use the rest of the context)"
        },
    )
    max_queue: int = field(
        default=1024, metadata={"help": "sequences allowed to wait; more get 429"}
    )
    max_logprobs: int = field(
        default=20,
        metadata={
            "help": "most logprob alternatives a request may ask for per token "
            "(-1: the whole vocabulary, which a request asks for with logprobs -1)"
        },
    )
    adapter_path: str | None = field(
        default=None, metadata={"help": "PEFT LoRA adapter to load and serve by default"}
    )
    adapter_name: str | None = field(
        default=None, metadata={"help": "its model id (default: the adapter folder's name)"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run the checkpoint's own model and tokenizer code"}
    )
    log_level: str = field(
        default="INFO", metadata={"help": "server log level", "choices": LOG_LEVELS}
    )
    api_key: str | None = field(
        default=None,
        metadata={"help": "require 'Authorization: Bearer KEY' on /v1/* and /generate"},
    )
    served_model_name: str | None = field(default=None, metadata={"help": "model id in /v1/models"})
    tool_call_parser: str | None = field(
        default="hermes",
        metadata={"help": "format of tool calls in chat replies, or 'none'", "none": "none"},
    )
    admin_key: str | None = field(
        default=None,
        metadata={
            "help": "require 'Authorization: Bearer KEY' on the admin routes (default: the "
            "--api-key; with neither key they answer loopback clients only)"
        },
    )
    allow_open_admin: bool = field(
        default=False,
        metadata={
            "help": "with no key, open the admin routes to every client (needed to serve on "
            "a non-loopback --host without a key)"
        },
    )
    shutdown_grace_s: float = field(
        default=10.0,
        metadata={
            "help": "on SIGTERM/SIGINT, how long running requests may finish before they "
            "are aborted"
        },
    )
    weights_dir: str | None = field(
        default=None, metadata={"help": "folder that path-based updates/adapters may read"}
    )
    max_upload_bytes: int = field(
        default=256 * 2**20, metadata={"help": "largest /upload_adapter body"}
    )
    max_update_bytes: int = field(
        default=16 * 2**30, metadata={"help": "largest streamed /update_weights body"}
    )
    max_request_bytes: int = field(
        default=32 * 2**20,
        metadata={"help": "largest /v1/* or /generate body; more gets 413"},
    )
    trust_request_chat_template: bool = field(
        default=False,
        metadata={
            "help": "let chat requests bring their own chat_template (code run by the server)"
        },
    )

    def __post_init__(self) -> None:
        self._check_limits()
        self._check_serving()
        self._check_admin_access()
        self._check_paths()

    def _check_limits(self) -> None:
        for name in LIMITS:
            check_positive_int(name, getattr(self, name))
        if self.max_tokens is not None:
            check_positive_int("max_tokens", self.max_tokens)
        check_int("max_logprobs", self.max_logprobs, minimum=-1)
        if not is_number(self.flush_interval_ms) or self.flush_interval_ms < 0:
            raise ValueError(f"flush_interval_ms must be >= 0, got {self.flush_interval_ms!r}")
        grace = self.shutdown_grace_s
        if not is_number(grace) or not 0 <= grace < float("inf"):
            raise ValueError(f"shutdown_grace_s must be a finite number >= 0, got {grace!r}")

    def _check_serving(self) -> None:
        self.log_level = str(self.log_level).upper()
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        check_int("port", self.port, minimum=0, maximum=65535)
        if not self.host:
            raise ValueError("host must be a non-empty address")
        if self.tool_call_parser is not None:
            from rlserve.tools import PARSERS

            if self.tool_call_parser not in PARSERS:
                raise ValueError(
                    f"tool_call_parser must be one of {sorted(PARSERS)} or None, "
                    f"got {self.tool_call_parser!r}"
                )
        check_bool("trust_request_chat_template", self.trust_request_chat_template)

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
