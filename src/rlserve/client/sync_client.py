"""Blocking client for rlserve and any OpenAI-compatible server (vLLM, SGLang)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx

from rlserve.client import effects as fx
from rlserve.client.admin import Admin
from rlserve.client.endpoints import Endpoints
from rlserve.client.sse import sse_chunks


class Client(Admin, Endpoints):
    """Synchronous client. Every completion/chat/generate response is a dict with
    `rlserve_train` = {"prompt_tokens", "response_tokens", "response_logprobs", ...}.

    Retries connection errors, 429 and 5xx with exponential backoff and jitter
    (`max_retries` times, never past the call's `timeout`, which bounds the whole call);
    other 4xx raise `APIStatusError` at once.
    """

    def _open(self) -> None:
        self._http = httpx.Client(**self._http_options)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, flow: fx.Flow[Any]) -> Any:
        step = fx.Outcome().send(flow)
        while not isinstance(step, fx.Done):
            step = fx.capture(self._perform, step).send(flow)
        return step.value

    def _perform(self, effect: Any) -> Any:
        match effect:
            case fx.Transmit(options, stream):
                response = self._http.send(self._http.build_request(**options), stream=stream)
                if response.status_code >= 400:
                    response.read()
                    response.close()
                return response
            case fx.Sleep(seconds):
                return time.sleep(seconds)
            case fx.AwaitWeightSync(controller, model_tag):
                return controller.wait_for_weight_sync(model_tag)
            case fx.Offload(fn, args):
                return fn(*args)
            case fx.Locked(flow):
                with self._lock:
                    return self._run(flow)
            case fx.Chunks(response):
                return _iter_chunks(response)
        raise TypeError(f"not an effect: {effect!r}")


def _iter_chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    with closing(response):
        yield from sse_chunks(response.iter_lines())
