"""Seed 000's two inference service clients.

`OpenAIInferenceServiceClient` talks to any OpenAI-compatible server (rlserve, vLLM,
SGLang) through rlserve's `Client`: retries, token ids and fp32 logprobs from the server.
`RemoteApiInferenceServiceClient` hands serialisable prompts to a service holder
(Tinker/Weaver) that owns the tokenizer and the sampler.
"""

from __future__ import annotations

import json
from copy import deepcopy
from typing import Any

from rlserve.client.nexrl_data import holder_reply, with_nexrl_train
from rlserve.client.service_base import InferenceServiceClient, check_messages, check_prompt
from rlserve.client.sync_client import Client
from rlserve.client.tokenizer import apply_chat_template

HTTP_TIMEOUT_S = 1000.0  # NexRL's: a long rollout must not time out
# Body fields the client sets itself (NexRL drops the caller's too): the config's model,
# and logprobs, which training always needs.
_DROPPED_KWARGS = ("model", "logprobs")


class OpenAIInferenceServiceClient(InferenceServiceClient):
    """Seed 000's client of an OpenAI-compatible server: `inference_service.base_url`
    (with or without `/v1`), `model` (sent as the request's model, and the default
    tokenizer), `api_key`, `max_retries`, `max_tokens`; `temperature` at the top level.

    Replies are the server's JSON with `rlserve_train` and `nexrl_train`, both built from
    the token ids and logprobs the server returned. The tokenizer (`tokenizer`, else
    `model`, through `hf_tokenizer`) is loaded on first use: by `apply_chat_template`, or
    for a server that returns no prompt token ids.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self._http = Client(
            cfg.http_base_url,
            api_key=cfg.api_key,
            max_retries=cfg.max_retries,
            timeout=HTTP_TIMEOUT_S,
            model=cfg.require_model(),
            tokenizer=cfg.tokenizer_path,
            freeze_for_weight_sync=False,  # the base class freezes every call itself
        )

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (loaded once, on first use)."""
        return self._http.tokenizer

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIInferenceServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
    ) -> str | list[int]:
        check_messages(messages)
        if self.config.parse_tool_call_arguments:
            messages = parsed_tool_arguments(messages)
        return apply_chat_template(
            self.tokenizer, messages, tools, tokenize, add_generation_prompt=add_generation_prompt
        )

    def completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        check_prompt(prompt)
        body = self._body(kwargs)
        self._before_call()
        return with_nexrl_train(self._http.completion(prompt, **body))

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        check_messages(messages)
        body = self._body(kwargs)
        self._before_call()
        return with_nexrl_train(self._http.generate(messages, **body))

    def _body(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS}
        max_tokens, temperature = self._sampling(kwargs)
        model = self.config.model
        return {"model": model, "max_tokens": max_tokens, "temperature": temperature, **kwargs}


class RemoteApiInferenceServiceClient(InferenceServiceClient):
    """Seed 000's client of a Tinker/Weaver service through a service holder.

    The holder (set at construction or with `set_service_holder`) owns the tokenizer and
    the sampler: `sample_from_prompt(prompt=, max_tokens=, temperature=, num_samples=)`
    answers {"response", "prompt_tokens", "response_tokens", "response_logprobs",
    "finish_reason", ...}; chats go to its `sample_from_messages(messages=, ..., tools=)`,
    or, for a holder without one, are rendered with its `apply_chat_template` and sent to
    `sample_from_prompt`. Only `max_tokens`, `temperature` (and for chats `tools`) are
    taken per call: a holder's sampler takes nothing else, so other keywords are an error.
    """

    def __init__(self, config: Any, service_holder: Any = None) -> None:
        super().__init__(config)
        self._service_holder: Any = None
        if service_holder is not None:
            self.set_service_holder(service_holder)

    def set_service_holder(self, service_holder: Any) -> None:
        """Use `service_holder` (it must have `sample_from_prompt`)."""
        if not callable(getattr(service_holder, "sample_from_prompt", None)):
            raise ValueError(
                "service_holder must have a sample_from_prompt(prompt, max_tokens, "
                f"temperature, num_samples) method; got a {type(service_holder).__name__}"
            )
        self._service_holder = service_holder

    @property
    def service_holder(self) -> Any:
        if self._service_holder is None:
            raise ValueError("no service holder set: call set_service_holder(holder) first")
        return self._service_holder

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
    ) -> str | list[int]:
        check_messages(messages)
        render = getattr(self.service_holder, "apply_chat_template", None)
        if not callable(render):
            raise ValueError("the service holder has no apply_chat_template method")
        return render(
            messages=messages,
            tools=tools or [],
            add_generation_prompt=add_generation_prompt,
            tokenize=tokenize,
        )

    def completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {prompt!r}")
        holder = self.service_holder
        sampling = self._holder_sampling(kwargs)
        self._before_call()
        result = holder.sample_from_prompt(prompt=prompt, num_samples=1, **sampling)
        return holder_reply(result, self._model_name, chat=False)

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        check_messages(messages)
        holder = self.service_holder
        tools = kwargs.pop("tools", None) or []
        sampling = self._holder_sampling(kwargs)
        self._before_call()
        if callable(getattr(holder, "sample_from_messages", None)):
            result = holder.sample_from_messages(
                messages=messages, num_samples=1, tools=tools, **sampling
            )
        else:
            prompt = self.apply_chat_template(messages, tools=tools)
            result = holder.sample_from_prompt(prompt=prompt, num_samples=1, **sampling)
        return holder_reply(result, self._model_name, chat=True)

    @property
    def _model_name(self) -> str:
        return self.config.model or "remote-api"

    def _holder_sampling(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS}
        max_tokens, temperature = self._sampling(kwargs)
        if kwargs:
            raise ValueError(
                f"the service holder samples with max_tokens and temperature only; "
                f"{sorted(kwargs)[0]!r} is not supported"
            )
        if max_tokens is None:
            raise ValueError("max_tokens is required: pass it or set inference_service.max_tokens")
        return {"max_tokens": max_tokens, "temperature": temperature}


def parsed_tool_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` whose tool-call `arguments` JSON strings are dicts ("" -> {});
    a string that is not JSON stays as it is."""
    messages = deepcopy(messages)
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if arguments is None or arguments == "":
                function["arguments"] = {}
            elif isinstance(arguments, str):
                try:
                    function["arguments"] = json.loads(arguments, strict=False)
                except json.JSONDecodeError:
                    pass
    return messages
