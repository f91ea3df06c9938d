"""Every call's steps, written once as flows (see `effects`) that both clients drive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from rlserve.client.effects import (
    AwaitWeightSync,
    Chunks,
    Flow,
    Locked,
    Offload,
    Sleep,
    Transmit,
)
from rlserve.client.payloads import (
    PreparedCall,
    attach_training_data,
    decode_body,
    first_model_id,
    models_call,
)
from rlserve.client.retry import Attempts

if TYPE_CHECKING:
    from rlserve.client.base import ClientBase


def send(client: ClientBase, call: PreparedCall, stream: bool = False) -> Flow[httpx.Response]:
    """The first successful response to `call` (with `stream`, its body still to be read),
    retried within the call's deadline. A stream is retried only until it opens; a broken
    stream is not replayed."""
    attempts = Attempts(call, client.retry_policy, client.timeout)
    while True:
        try:
            response = yield Transmit(attempts.request_options(), stream)
        except httpx.TransportError as exc:
            delay = attempts.wait_after(exc)
        else:
            if response.status_code < 400:
                return response
            delay = attempts.wait_after(response)
        yield Sleep(delay)


def decoded(client: ClientBase, call: PreparedCall) -> Flow[Any]:
    """`call`'s response body: JSON when it parses, else text."""
    return decode_body((yield from send(client, call)))


def inference(client: ClientBase, kind: str, call: PreparedCall) -> Flow[Any]:
    """A completion, chat or generate call: waits out a weight sync, fills in the default
    model, and adds `rlserve_train` to the reply (or returns the stream's chunks)."""
    if client._frozen_by is not None:
        yield AwaitWeightSync(client._frozen_by, client.model_tag)
    if kind != "generate" and "model" not in call.body:
        model = client.model
        call.body["model"] = model if model is not None else (yield Locked(default_model(client)))
    if call.stream:
        opened = yield from send(client, call, stream=True)
        return (yield Chunks(opened))
    response = yield from decoded(client, call)
    prompts = None
    if client._needs_client_prompt_ids(kind, call, response):
        prompts = yield Offload(client._client_prompt_ids, (kind, call.body))
    return attach_training_data(kind, call, response, prompts)


def default_model(client: ClientBase) -> Flow[str]:
    """The client's `model`, looked up once as the first id at `/v1/models`."""
    if client.model is None:
        client.model = first_model_id((yield from decoded(client, models_call())))
    return client.model
