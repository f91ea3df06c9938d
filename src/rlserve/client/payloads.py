"""Request bodies and response post-processing shared by the sync and async clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlserve._checks import is_int, is_token_ids
from rlserve.client.training_data import (
    TRAIN_KEY,
    chat_training_data,
    completion_training_data,
    generate_training_data,
    lacks_prompt_tokens,
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


class _NotGiven:
    """Marks a per-call `timeout` that was not passed (None means "no limit")."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()


@dataclass
class PreparedCall:
    """One HTTP call: method, path, JSON body and per-call transport options.

    `timeout` bounds the whole call, retries included; `NOT_GIVEN` uses the client's.
    An `admin` call carries the admin bearer token and is sent once, with the client's
    per-read timeouts and no total deadline (a weight upload may take minutes); its
    `upload` (httpx `content=`, `data=`, `files=`) replaces the JSON body.
    """

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    timeout: Any = NOT_GIVEN
    method: str = "POST"
    admin: bool = False
    upload: dict[str, Any] | None = None

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
    timeout = kw.pop("timeout", NOT_GIVEN)
    body = {**(defaults or {}), **{k: v for k, v in kw.items() if v is not None}, **extra_body}
    return PreparedCall(path, body, dict(headers), dict(params), timeout)


def get_call(path: str, headers: dict[str, str] | None = None) -> PreparedCall:
    """A plain `GET path` (health, metrics, models: never frozen by a weight sync)."""
    return PreparedCall(path, {}, dict(headers or {}), method="GET")


def models_call() -> PreparedCall:
    """`GET /v1/models`."""
    return get_call("/v1/models")


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
    """The prompt itself when it is a flat, non-empty list of token ids."""
    if isinstance(prompt, list) and prompt and is_token_ids(prompt):
        return list(prompt)
    return None


def token_id_prompts(prompt: Any) -> list[list[int]] | None:
    """Every prompt's ids when the prompt is a token-id list or a list of them."""
    flat = token_id_prompt(prompt)
    if flat is not None:
        return [flat]
    if isinstance(prompt, list) and prompt and all(token_id_prompt(p) for p in prompt):
        return [list(p) for p in prompt]
    return None


def needs_client_prompt_ids(kind: str, call: PreparedCall, response: Any) -> bool:
    """Whether a completion/chat `response` leaves out the ids of a prompt that the call
    sent as text: only the client's own tokenisation can fill them in then."""
    if kind not in ("completion", "chat") or not isinstance(response, dict):
        return False
    if kind == "completion" and token_id_prompts(call.body.get("prompt")) is not None:
        return False
    return lacks_prompt_tokens(kind, response)


def attach_training_data(
    kind: str, call: PreparedCall, response: Any, client_prompts: list[list[int]] | None = None
) -> Any:
    """Add `rlserve_train` to a decoded JSON response (non-dicts pass through).

    Prompts the server returned no token ids for are taken from the call itself when
    it sent token ids, else from `client_prompts` (the client's own tokenisation of each
    prompt, worth computing only when `needs_client_prompt_ids`).
    """
    if not isinstance(response, dict):
        return response
    if kind == "completion":
        prompts = token_id_prompts(call.body.get("prompt")) or client_prompts
        echo = bool(call.body.get("echo"))
        n = call.body["n"] if is_int(call.body.get("n")) else 1
        response[TRAIN_KEY] = completion_training_data(response, echo=echo, per_prompt=prompts, n=n)
    elif kind == "chat":
        prompt = client_prompts[0] if client_prompts else None
        response[TRAIN_KEY] = chat_training_data(response, prompt)
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


def request_options(call: PreparedCall, timeout: Any) -> dict[str, Any]:
    """Keyword arguments for `build_request` (`timeout`: this attempt's)."""
    options: dict[str, Any] = {
        "method": call.method,
        "url": call.path,
        "headers": call.headers,
        "params": call.params,
        "timeout": timeout,
    }
    if call.upload is not None:
        options.update(call.upload)
    elif call.method != "GET":
        options["json"] = call.body
    return options
