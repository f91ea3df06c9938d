"""What every route needs: settings, the engine loop, a tokenizer, metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlserve.server.config import ServerConfig
from rlserve.server.engine_loop import EngineLoop
from rlserve.server.errors import APIError, shown
from rlserve.server.logprob_format import TokenRenderer
from rlserve.server.metrics import ServerMetrics
from rlserve.server.safetensors_body import ReceiveBuffer

MAX_VERSION_LABELS = 4096  # labels remembered for per-token spans (older ones: "default")


@dataclass
class ServerState:
    """Shared by the routes. `tokenizer` is the server's own copy (never the engine's,
    which belongs to the engine thread): chat templates, echo text, logprob tokens.
    `default_adapter`: the LoRA adapter requests naming no model use (the start-up one,
    or the latest loaded without a name; see `admin_routes`). `adapter_lock`: held while
    an adapter is installed or removed, so that reading and setting `default_adapter`
    around the engine call is one step."""

    config: ServerConfig
    loop: EngineLoop
    tokenizer: Any
    renderer: TokenRenderer
    model_name: str
    model_path: str
    max_model_len: int
    metrics: ServerMetrics
    default_adapter: str | None = None
    vocab_size: int | None = None  # the model's vocabulary: what `logprobs: -1` asks for
    created: int = 0
    receive_buffer: ReceiveBuffer = field(default_factory=ReceiveBuffer)
    adapter_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    special_tokens: tuple[str, ...] = ()  # the tokenizer's special-token texts
    weight_version: str = "default"  # SGLang's free-form weight-version label
    # (first policy version, label): the label tokens of each policy version carry.
    version_labels: list[tuple[int, str]] = field(default_factory=list)
    adapter_roots: dict[str, str] = field(default_factory=dict)  # adapter -> path given

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())
        self.special_tokens = special_token_texts(self.tokenizer)
        if self.config.adapter_path and self.default_adapter:
            self.adapter_roots[self.default_adapter] = self.config.adapter_path

    def set_weight_version(self, label: str, policy_version: int | None = None) -> None:
        """Make `label` SGLang's weight version, carried by the tokens of `policy_version`
        (default: the current one) and later ones, until the next label."""
        start = self.policy_version if policy_version is None else policy_version
        kept = [entry for entry in self.version_labels if entry[0] < start]
        self.version_labels = [*kept[-(MAX_VERSION_LABELS - 1) :], (start, label)]
        self.weight_version = label

    def label_of(self, policy_version: int) -> str:
        """The weight-version label of tokens made by `policy_version`'s weights."""
        for start, label in reversed(self.version_labels):
            if start <= policy_version:
                return label
        return "default"

    def adapters(self) -> list[str]:
        """Names of the LoRA adapters the engine holds (each served as a model id)."""
        return list(self.loop.stats()["adapters"])  # published by the engine thread

    def current_default_adapter(self) -> str | None:
        """The default adapter, if the engine still holds it (else: the base weights)."""
        name = self.default_adapter
        return name if name is not None and name in self.adapters() else None

    def resolve_model(self, name: str | None) -> str | None:
        """The LoRA adapter a request's `model` selects (None: the base weights); 404 for
        a model this server does not serve. No model means the default adapter, if any."""
        if name is None:
            return self.current_default_adapter()
        if name in (self.model_name, self.model_path):
            return None
        if name in self.adapters():
            return name
        served = ", ".join(repr(m) for m in [self.model_name, *self.adapters()])
        raise APIError(
            404,
            f"model {shown(name)} does not exist; this server serves {served}",
            param="model",
            code="model_not_found",
        )

    @property
    def policy_version(self) -> int:
        return int(self.loop.stats().get("policy_version", 0))

    @property
    def paused(self) -> str | None:
        """The engine's pause mode after its latest step (None: generating)."""
        return self.loop.stats()["paused"]


Handler = Callable[[ServerState, Request], Awaitable[Response]]


def post_routes(router: APIRouter, state: ServerState, handlers: dict[str, Handler]) -> None:
    """A `POST path` route for each handler, called as `handler(state, request)`."""
    for path, handler in handlers.items():
        router.add_api_route(path, _bound(handler, state), methods=["POST"])


def _bound(handler: Handler, state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(state, request)

    endpoint.__name__ = handler.__name__  # FastAPI names the route after it
    return endpoint


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def special_token_texts(tokenizer: Any) -> tuple[str, ...]:
    """The tokenizer's special-token texts, added special tokens included (Llama 3's
    `<|eot_id|>` is only there)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    texts = [*getattr(tokenizer, "all_special_tokens", ())]
    texts += [token.content for token in added if token.special]
    return tuple(dict.fromkeys(texts))
