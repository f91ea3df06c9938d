"""The inference-backend seam: every backend is an `InferenceBackend`, `as_backend` picks
the right one (or says why not), and the native backend's samples are the engine's own
outputs, merged by the one merge (`CompletionOutput.extend`)."""

from __future__ import annotations

import asyncio

import pytest

from rlserve import SamplingParams
from rlserve.backends import (
    UNKNOWN_VERSION,
    EngineBackend,
    InferenceBackend,
    RemoteBackend,
    Sample,
    as_backend,
    completion_fields,
    sample_from_completion,
)

GREEDY = SamplingParams(temperature=0, max_tokens=12)


class FakeClient:
    """A sync client's surface as `RemoteBackend` uses it: a tokenizer, `health()`,
    `models()` and `completion(prompt, **fields)`, answering from `reply(prompt)`."""

    def __init__(self, tokenizer, reply=None, cards=None) -> None:
        self.tokenizer = tokenizer
        self.reply = reply or (lambda prompt: completion_response(prompt[-2:]))
        self.cards = cards
        self.calls: list[dict] = []

    def health(self) -> dict:  # Python 3.11's isinstance(…, a Protocol) reads policy_version
        return {"policy_version": 0}

    def models(self) -> dict:
        if self.cards is None:
            raise ConnectionError("no server")
        return {"data": self.cards}

    def completion(self, prompt, **fields) -> dict:
        self.calls.append(fields)
        return self.reply(prompt)


def completion_response(tokens, versions=None, stop_reason=None) -> dict:
    choice = {"stop_reason": stop_reason}
    if versions is not None:
        choice["weight_versions"] = versions
    train = {
        "response_tokens": tokens,
        "response_logprobs": [-0.25] * len(tokens),
        "finish_reason": "stop",
    }
    return {"choices": [choice], "rlserve_train": train}


def collect(backend, requests) -> list[Sample]:
    samples: dict[int, Sample] = {}
    backend.generate(requests, lambda k, sample: samples.__setitem__(k, sample))
    assert sorted(samples) == list(range(len(requests)))
    return [samples[k] for k in range(len(requests))]


# ---- the protocol and the dispatch ---------------------------------------------------------


def test_every_backend_satisfies_the_protocol(bundled):
    assert isinstance(EngineBackend(bundled), InferenceBackend)
    assert isinstance(RemoteBackend(FakeClient(bundled.tokenizer)), InferenceBackend)
    assert not isinstance(object(), InferenceBackend)


def test_the_old_names_still_work():
    from rlserve import rl

    assert rl.TokenGenerator is InferenceBackend and rl.Sample is Sample
    assert rl.EngineGenerator is EngineBackend and rl.ClientGenerator is RemoteBackend


def test_as_backend_dispatch(bundled):
    from rlserve.client import Client

    native = as_backend(bundled, "adapter")
    assert type(native) is EngineBackend and native.lora_name == "adapter"
    assert native.tokenizer is bundled.tokenizer
    assert native.max_model_len == bundled.max_model_len
    with Client("http://127.0.0.1:1", tokenizer=bundled.tokenizer, max_retries=0) as client:
        remote = as_backend(client, "adapter")
        assert type(remote) is RemoteBackend and remote.model == "adapter"
        assert remote.tokenizer is bundled.tokenizer
    custom = RemoteBackend(FakeClient(bundled.tokenizer))
    assert as_backend(custom) is custom  # already a backend: used as it is


def test_as_backend_bad_inputs(bundled):
    from rlserve.client import AsyncClient

    with pytest.raises(TypeError, match="Engine.*InferenceBackend.*got object"):
        as_backend(object())

    async def pass_async_client() -> None:
        async with AsyncClient("http://127.0.0.1:1", tokenizer=bundled.tokenizer) as client:
            as_backend(client)

    with pytest.raises(TypeError, match="AsyncClient"):
        asyncio.run(pass_async_client())
    with pytest.raises(ValueError, match="max_concurrency"):
        RemoteBackend(FakeClient(bundled.tokenizer), max_concurrency=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        RemoteBackend(FakeClient(bundled.tokenizer), max_concurrency=True)


def test_the_native_backend_needs_an_idle_running_engine(bundled):
    request_id = bundled.add_request([1, 2, 3], GREEDY)
    try:
        with pytest.raises(RuntimeError, match="finish or abort"):
            EngineBackend(bundled)
    finally:
        bundled.abort(request_id)
        bundled.step()
    backend = EngineBackend(bundled)
    bundled.pause("keep")
    try:
        with pytest.raises(RuntimeError, match="paused"):
            backend.generate([([1, 2, 3], GREEDY)], lambda k, s: None)
    finally:
        bundled.resume()


# ---- the native backend: the engine's outputs, merged once ---------------------------------


def test_native_samples_equal_engine_generate(bundled):
    prompts = [bundled.tokenizer.encode(t) for t in ("The capital of France is", "1, 2, 3,")]
    stop_id = bundled.tokenizer.encode(" 4")[0]
    params = [GREEDY, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_id])]
    samples = collect(EngineBackend(bundled), list(zip(prompts, params, strict=True)))
    expected = bundled.generate(prompts, params)
    for sample, output in zip(samples, expected, strict=True):
        out = output.outputs[0]
        assert sample.error is None
        assert sample.token_ids == out.token_ids and len(out.token_ids) > 1
        assert sample.logprobs == out.logprobs
        assert sample.weight_versions == out.weight_versions
        assert (sample.finish_reason, sample.stop_reason) == (out.finish_reason, out.stop_reason)
    assert not bundled.has_unfinished_requests()


def test_a_rejected_request_fails_alone(bundled):
    good = bundled.tokenizer.encode("Hello")
    too_long = [1] * (bundled.max_model_len + 1)
    first, second = collect(EngineBackend(bundled), [(too_long, GREEDY), (good, GREEDY)])
    assert first.finish_reason == "error" and first.error.startswith("request rejected")
    assert second.error is None and second.token_ids


# ---- the remote backend: completion bodies in, samples out ---------------------------------


def test_remote_generate_in_order_with_failures(bundled):
    def reply(prompt):
        if prompt[0] == 0:
            raise ConnectionError("refused")
        return completion_response(prompt[-2:], versions=[7, 7])

    client = FakeClient(bundled.tokenizer, reply)
    samples = collect(RemoteBackend(client, "lora-a"), [([5, 6, 7], GREEDY), ([0, 1], GREEDY)])
    assert samples[0] == Sample([6, 7], [-0.25, -0.25], [7, 7], "stop", None)
    assert samples[1].error == "ConnectionError: refused"
    assert all(call["model"] == "lora-a" for call in client.calls)


def test_remote_max_model_len(bundled):
    assert RemoteBackend(FakeClient(bundled.tokenizer)).max_model_len is None
    given = RemoteBackend(FakeClient(bundled.tokenizer), max_model_len=99)
    assert given.max_model_len == 99
    card = FakeClient(bundled.tokenizer, cards=[{"max_model_len": 2048}])
    assert RemoteBackend(card).max_model_len == 2048
    not_int = FakeClient(bundled.tokenizer, cards=[{"max_model_len": True}])
    assert RemoteBackend(not_int).max_model_len is None


def test_sample_from_completion():
    sample = sample_from_completion(completion_response([4, 5], stop_reason=5))
    assert sample == Sample([4, 5], [-0.25, -0.25], [UNKNOWN_VERSION] * 2, "stop", 5)
    assert sample.ends_with_stop_token
    no_logprobs = completion_response([4, 5])
    no_logprobs["rlserve_train"]["response_logprobs"] = [None, -1.0]
    assert "no token ids or logprobs" in sample_from_completion(no_logprobs).error
    assert sample_from_completion({}).finish_reason == "error"


def test_completion_fields():
    params = SamplingParams(temperature=0.5, max_tokens=7, stop=["x"], seed=3)
    fields = completion_fields(params)
    assert fields["max_tokens"] == 7 and fields["temperature"] == 0.5 and fields["seed"] == 3
    assert fields["stop"] == ["x"] and fields["stop_token_ids"] is None
    assert fields["logprobs"] == 1 and fields["include_stop_str_in_output"] is True
