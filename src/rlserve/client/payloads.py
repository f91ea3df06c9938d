"""Request bodies and response post-processing shared by the sync and async clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlserve.client.training_data import (
    TRAIN_KEY,
    chat_training_data,
    completion_training_data,
    generate_training_data,
)

# Extra fields that make a response carry exact training data: token ids for prompt and
# completion, logprob tokens as `token_id:N`, and text that covers every sampled token
# (stop strings and special tokens included). `no_stop_trim` is SGLang's name for
# `include_stop_str_in_output`; servers ignore the fields they do not know.
TRAINING_EXTRA_BODY: dict[str, Any] = {
    "return_token_ids": True,
    "return_tokens_as_token_ids": True,
    "include_stop_str_in_output": True,
    "no_stop_trim": True,
    "skip_special_tokens": False,
}

# Keyword arguments that the OpenAI SDK treats as transport options, not body fields.
_TRANSPORT_KEYS = ("extra_body", "extra_headers", "extra_query", "timeout")


@dataclass
class PreparedCall:
    """One HTTP call: path, JSON body and per-call transport options."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


def normalize_base_url(base_url: str) -> str:
    """Accept `http://host:8000`, `http://host:8000/` or `http://host:8000/v1`."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def auth_headers(api_key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(extra or {})
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def prepare(
    path: str, kwargs: dict[str, Any], defaults: dict[str, Any] | None = None
) -> PreparedCall:
    """Split OpenAI-SDK-style kwargs into a body (defaults < kwargs < extra_body)."""
    kw = dict(kwargs)
    extra_body = kw.pop("extra_body", None) or {}
    headers = kw.pop("extra_headers", None) or {}
    params = kw.pop("extra_query", None) or {}
    timeout = kw.pop("timeout", None)
    body = {**(defaults or {}), **{k: v for k, v in kw.items() if v is not None}, **extra_body}
    return PreparedCall(path, body, dict(headers), dict(params), timeout)


def call_defaults(kind: str, training: bool) -> dict[str, Any]:
    """Body defaults for a completion/chat call.

    `training=True` (`completion()`, `generate()`): logprobs on plus every vLLM field in
    `TRAINING_EXTRA_BODY`. Otherwise (`*.create()`): only `return_token_ids`, which
    vLLM, SGLang and rlserve accept and which leaves text and logprobs untouched.
    """
    if not training:
        return {"return_token_ids": True}
    logprobs: dict[str, Any] = {"logprobs": 1} if kind == "completion" else {"logprobs": True}
    return {**logprobs, **TRAINING_EXTRA_BODY}


def token_id_prompt(prompt: Any) -> list[int] | None:
    """The prompt itself when it is a flat list of token ids."""
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return list(prompt)
    return None


def attach_training_data(kind: str, call: PreparedCall, response: Any) -> Any:
    """Add `rlserve_train` to a decoded JSON response (non-dicts pass through)."""
    if not isinstance(response, dict):
        return response
    if kind == "completion":
        prompt = token_id_prompt(call.body.get("prompt"))
        echo = bool(call.body.get("echo"))
        response[TRAIN_KEY] = completion_training_data(response, prompt, echo)
    elif kind == "chat":
        response[TRAIN_KEY] = chat_training_data(response)
    elif kind == "generate":
        response[TRAIN_KEY] = generate_training_data(response)
    return response


def first_model_id(models_response: Any) -> str:
    """The first id in a `/v1/models` response."""
    data = models_response.get("data") if isinstance(models_response, dict) else None
    if not data:
        raise ValueError("the server lists no models at /v1/models; pass model= explicitly")
    return str(data[0]["id"])


def decode_body(response: Any) -> Any:
    """A response body as JSON when it parses, else as text."""
    try:
        return response.json()
    except ValueError:
        return response.text


def request_options(method: str, call: PreparedCall) -> dict[str, Any]:
    """Keyword arguments for `httpx.Client.request` / `build_request`."""
    options: dict[str, Any] = {"headers": call.headers, "params": call.params}
    if method != "GET":
        options["json"] = call.body
    if call.timeout is not None:
        options["timeout"] = call.timeout
    return options
