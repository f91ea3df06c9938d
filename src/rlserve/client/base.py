"""What the sync and async clients share: settings, weight-sync state, tokenizer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from rlserve._checks import is_int
from rlserve.chat_messages import chat_template_options, with_joined_text
from rlserve.client.effects import Flow
from rlserve.client.payloads import (
    PreparedCall,
    auth_headers,
    needs_client_prompt_ids,
    normalize_base_url,
)
from rlserve.client.retry import RetryPolicy, total_seconds
from rlserve.client.tokenizer import apply_chat_template, hf_tokenizer
from rlserve.client.weight_sync import WeightSyncController

DEFAULT_TIMEOUT = 600.0


class ClientBase:
    """Settings, weight-sync state and tokenizer; subclasses add the HTTP transport.

    `base_url` may end in `/v1` or not. `model` defaults to the first id the server
    lists at `/v1/models`. `tokenizer` (a name/path or a tokenizer object) serves
    `apply_chat_template`, and fills `rlserve_train["prompt_tokens"]` of text prompts
    when the server returns no prompt token ids: those ids are then the client's
    tokenisation, not necessarily the server's (see `_client_prompt_ids`).
    With a `weight_sync` controller and `freeze_for_weight_sync`, every inference call
    first waits while a weight sync of `model_tag` is in progress. `admin_key` is sent
    as the bearer token of the admin calls (`update_weights`, adapters,
    pause/resume/abort); default: `api_key`.

    `timeout` (seconds, an `httpx.Timeout`, or None for no limit; a call's own
    `timeout=` overrides it) bounds the whole call: every attempt, backoff wait and retry.
    A retry that could not start before it runs out is not made, and a call that runs
    out raises `APITimeoutError`. For a stream it bounds opening the stream, and each
    later read waits at most what was left then. Waiting for a weight sync (see
    `freeze_for_weight_sync`) is not counted.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        max_retries: int = 10,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        model: str | None = None,
        tokenizer: Any = None,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_connections: int = 256,
        headers: dict[str, str] | None = None,
        weight_sync: WeightSyncController | None = None,
        freeze_for_weight_sync: bool = True,
        model_tag: str = "default",
        admin_key: str | None = None,
    ) -> None:
        self.admin_key = admin_key
        self.base_url = normalize_base_url(base_url)
        self.weight_sync = weight_sync
        self.freeze_for_weight_sync = freeze_for_weight_sync
        self.model_tag = model_tag
        self.retry_policy = RetryPolicy(max_retries, initial_backoff, max_backoff)
        total_seconds(timeout)  # validates it
        self.timeout = timeout
        self.model = model
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._http_options: dict[str, Any] = {
            "base_url": self.base_url,
            "timeout": timeout,
            "headers": auth_headers(api_key, headers),
            "limits": httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                # rlserve's server keeps idle connections 65 s; vLLM/SGLang run uvicorn
                # with its 5 s default; 2 s stays below both so the client never sends on a
                # connection the server is closing.
                keepalive_expiry=2.0,
            ),
        }
        self._open()

    def _open(self) -> None:
        """Create the HTTP transport (subclasses)."""
        raise NotImplementedError

    def _run(self, flow: Flow[Any]) -> Any:
        """Drive `flow` (see `effects`): its result, or on the async client an awaitable
        of it (subclasses)."""
        raise NotImplementedError

    def set_weight_sync_controller(
        self, controller: WeightSyncController | None, model_tag: str = "default"
    ) -> None:
        """Wait on `controller` for syncs of `model_tag` before each inference call."""
        self.weight_sync = controller
        self.model_tag = model_tag

    def _admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    @contextmanager
    def _weight_sync(self) -> Iterator[Callable[[Any], None]]:
        """Mark a weight sync of `model_tag` on the controller (if any) for the block;
        the block calls the yielded function with the server's reply to record its
        `policy_version`."""
        controller = self.weight_sync
        if controller is None:
            yield lambda result: None
            return
        version: list[int | None] = [None]

        def record(result: Any) -> None:
            if isinstance(result, dict) and is_int(result.get("policy_version")):
                version[0] = result["policy_version"]

        controller.begin_sync(self.model_tag)
        try:
            yield record
        finally:
            controller.end_sync(self.model_tag, version=version[0])

    @property
    def _frozen_by(self) -> WeightSyncController | None:
        return self.weight_sync if self.freeze_for_weight_sync else None

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer, loaded on first use when given as a name/path."""
        if self._tokenizer is None:
            raise ValueError("this client has no tokenizer; pass tokenizer=<name or path>")
        with self._tokenizer_lock:  # the async client's worker threads load it once
            if isinstance(self._tokenizer, str):
                self._tokenizer = hf_tokenizer(self._tokenizer)
        return self._tokenizer

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render a conversation with the client's tokenizer (text, or ids if `tokenize`)."""
        return apply_chat_template(self.tokenizer, messages, tools, tokenize, **kwargs)

    def _client_prompt_ids(self, kind: str, body: dict[str, Any]) -> list[list[int]] | None:
        """Each prompt of a completion/chat call tokenised by the client's tokenizer, for
        servers that return no prompt token ids; None without a tokenizer.

        This is the client's tokenisation: completions use `add_special_tokens` from the
        body (default True, as vLLM and SGLang tokenise completion prompts), chats the
        tokenizer's chat template with the options rlserve's server takes from the body
        (`rlserve.chat_messages`). It equals the server's only when both use the same
        tokenizer and template. It may load the tokenizer and render a template: the async
        client runs it in a worker thread.
        """
        if self._tokenizer is None:
            return None
        if kind == "completion":
            return self._tokenize_completion_prompts(body)
        if kind == "chat" and isinstance(body.get("messages"), list):
            ids = self._tokenize_chat(body)
            return None if ids is None else [ids]
        return None

    def _needs_client_prompt_ids(self, kind: str, call: PreparedCall, response: Any) -> bool:
        """Whether `_client_prompt_ids` has prompt ids to add to `response`."""
        return self._tokenizer is not None and needs_client_prompt_ids(kind, call, response)

    def _tokenize_completion_prompts(self, body: dict[str, Any]) -> list[list[int]] | None:
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return None
        special = body.get("add_special_tokens", True)
        return [list(self.tokenizer.encode(t, add_special_tokens=special)) for t in texts]

    def _tokenize_chat(self, body: dict[str, Any]) -> list[int] | None:
        """The chat prompt's ids as the server renders it (text parts joined, the same
        template options); None when its content parts are not all text."""
        try:
            messages = [with_joined_text(m, i) for i, m in enumerate(body["messages"])]
        except ValueError:
            return None  # e.g. image parts: how the server renders them is unknown
        options = {**chat_template_options(body), "tokenize": True}
        ids = apply_chat_template(self.tokenizer, messages, **options)
        return list(ids)  # type: ignore[arg-type]
