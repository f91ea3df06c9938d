"""Seed 000's abstract `InferenceServiceClient`: the interface, the weight-sync freeze and
the OpenAI-style `completions.create` / `chat.completions.create`.

The freeze waits on whatever controller the trainer set: rlserve's `WeightSyncController`
(or any object with `wait_for_weight_sync(model_tag)`, seed 000's call), or NexRL's own
controller, whose `check_rollout_service_status(model_tag)` answers "continue" or "block"
and is polled as NexRL polls it (every 0.1 s, at most 60 s).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from rlserve._checks import is_token_ids
from rlserve.client.service_config import InferenceServiceConfig, load_service_config

POLL_INTERVAL_S = 0.1
MAX_POLL_WAIT_S = 60.0


class InferenceServiceClient(ABC):
    """One inference service behind `completion` (a prompt), `generate` (chat messages)
    and `apply_chat_template`; every reply is an OpenAI-style dict carrying
    `nexrl_train` and `rlserve_train`.

    `config`: a dict, an omegaconf `DictConfig` or an `InferenceServiceConfig` (see
    `service_config`; None: its defaults). With a weight-sync controller set and
    `freeze_for_weight_sync`, each call first waits while a sync of the client's model tag
    is in progress.
    """

    def __init__(self, config: Any = None) -> None:
        # None: the defaults (NexRL's base class takes no config; subclasses may not pass one)
        self.config = InferenceServiceConfig() if config is None else load_service_config(config)
        self._weight_sync_controller: Any = None
        self._model_tag = self.config.tag
        self._freeze_for_weight_sync = self.config.freeze_for_weight_sync

    @abstractmethod
    def completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        """Complete `prompt`; `max_tokens` / `temperature` default to the config's."""

    @abstractmethod
    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """Answer a chat; `max_tokens` / `temperature` default to the config's."""

    @abstractmethod
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
    ) -> str | list[int]:
        """The prompt `messages` (and `tools`) render to: text, or token ids."""

    @property
    def model_tag(self) -> str:
        return self._model_tag

    def set_weight_sync_controller(self, controller: Any, model_tag: str | None = None) -> None:
        """Wait on `controller` for syncs of `model_tag` (default: the config's
        `identifier` / `model_tag`) before each call; None removes it."""
        if controller is not None and not _can_wait(controller):
            raise ValueError(
                "controller must have wait_for_weight_sync(model_tag) or "
                f"check_rollout_service_status(model_tag); got a {type(controller).__name__}"
            )
        if model_tag is not None and (not isinstance(model_tag, str) or not model_tag):
            raise ValueError(f"model_tag must be a non-empty string, got {model_tag!r}")
        self._weight_sync_controller = controller
        if model_tag is not None:
            self._model_tag = model_tag

    def _wait_for_weight_sync(self) -> None:
        """Block while the controller syncs this client's model (no controller: return)."""
        controller = self._weight_sync_controller
        if controller is None:
            return
        if hasattr(controller, "wait_for_weight_sync"):
            controller.wait_for_weight_sync(self._model_tag)
        else:
            _poll_status(controller, self._model_tag)

    def _before_call(self) -> None:
        if self._freeze_for_weight_sync:
            self._wait_for_weight_sync()

    def _sampling(self, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """Pop `max_tokens` and `temperature` from `kwargs`, defaulting to the config's."""
        max_tokens = kwargs.pop("max_tokens", None)
        temperature = kwargs.pop("temperature", None)
        if max_tokens is None:
            max_tokens = self.config.max_tokens
        return max_tokens, self.config.temperature if temperature is None else temperature

    @property
    def completions(self) -> CompletionsWrapper:
        """`client.completions.create(prompt=..., ...)`: `completion`, OpenAI-style."""
        return CompletionsWrapper(self)

    @property
    def chat(self) -> ChatWrapper:
        """`client.chat.completions.create(messages=[...], ...)`: `generate`, OpenAI-style."""
        return ChatWrapper(self)


class CompletionsWrapper:
    """`completions.create` over `InferenceServiceClient.completion` (returns its dict)."""

    def __init__(self, client: InferenceServiceClient) -> None:
        self._client = client

    def create(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        _refuse_stream(kwargs)
        return self._client.completion(prompt=prompt, **kwargs)


class ChatCompletionsWrapper:
    """`chat.completions.create` over `InferenceServiceClient.generate` (returns its dict)."""

    def __init__(self, client: InferenceServiceClient) -> None:
        self._client = client

    def create(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        _refuse_stream(kwargs)
        return self._client.generate(messages=messages, **kwargs)


class ChatWrapper:
    def __init__(self, client: InferenceServiceClient) -> None:
        self.completions = ChatCompletionsWrapper(client)


def check_prompt(prompt: Any) -> None:
    """A completion prompt: text or token ids (ValueError naming `prompt` otherwise)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and is_token_ids(prompt)):
        return
    raise ValueError(f"prompt must be a string or a list of token ids, got {prompt!r}")


def check_messages(messages: Any) -> None:
    """Chat messages: a non-empty list of dicts (ValueError naming `messages` otherwise)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of dicts, got {messages!r}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be a dict, got {message!r}")


def _refuse_stream(kwargs: dict[str, Any]) -> None:
    if kwargs.get("stream"):
        raise ValueError("stream=True is not supported: training data needs the whole reply")


def _can_wait(controller: Any) -> bool:
    return callable(getattr(controller, "wait_for_weight_sync", None)) or callable(
        getattr(controller, "check_rollout_service_status", None)
    )


def _poll_status(controller: Any, model_tag: str) -> None:
    """NexRL's wait: poll `check_rollout_service_status` until it says "continue"."""
    waited = 0.0
    while True:
        status = controller.check_rollout_service_status(model_tag)
        if status == "continue":
            return
        if status != "block":
            raise ValueError(f"unknown status from the weight-sync controller: {status!r}")
        if waited >= MAX_POLL_WAIT_S:
            raise RuntimeError(f"weight sync of {model_tag!r} still blocks after {waited:.0f}s")
        time.sleep(POLL_INTERVAL_S)
        waited += POLL_INTERVAL_S
