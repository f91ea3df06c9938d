"""The tinker backends. The Tinker service cannot be reached from here, so `TinkerBackend`
runs over `LocalSamplingClient` (tests/support/remote_backends.py): a stand-in with the
tinker SDK's method signatures, futures and response types, computing with the native
engine on the bundled model. `ServiceBackend` runs over `HolderStandIn` below, a stand-in
for NexRL's TinkerServiceHolder with its `sample_from_prompt` / `compute_logprobs` shapes
(read from nex-agi/NexRL nexrl/tinker/tinker_service_holder.py), also on the engine."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from rlserve import Engine, SamplingParams
from rlserve.backends import UNKNOWN_VERSION, BackendUnsupported, create_backend
from rlserve.backends.tinker import ServiceBackend, TinkerBackend, finished, tinker_types
from tests.support.remote_backends import LocalSamplingClient

GREEDY = SamplingParams(temperature=0, max_tokens=8)
PROMPT = [5, 17, 42, 99]
UNMERGED = [86, 74, 71]  # "t" "h" "e": the tokenizer encodes "the" as one token, [365]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="module")
def stand_in(engine):
    client = LocalSamplingClient(engine)
    yield client
    client.close()


@pytest.fixture
def tinker(stand_in, engine) -> TinkerBackend:
    stand_in.calls.clear()
    return TinkerBackend(stand_in, engine.tokenizer)


class HolderStandIn:
    """NexRL's service-holder surface: `sample_from_prompt(prompt, max_tokens, temperature,
    num_samples)` tokenises the text without special tokens and answers its dict;
    `compute_logprobs(tokens)` the prompt logprobs (None first)."""

    def __init__(self, engine: Engine, with_scores: bool = True) -> None:
        self.engine = engine
        self.lock = threading.Lock()  # the backend calls from worker threads; one engine
        if not with_scores:
            self.compute_logprobs = None  # type: ignore[assignment]

    def sample_from_prompt(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, num_samples: int = 1
    ) -> dict:
        if "boom" in prompt:
            raise ConnectionError("service unavailable")
        tokens = self.engine.tokenizer.encode(prompt, add_special_tokens=False)
        params = SamplingParams(temperature=temperature, max_tokens=max_tokens, n=num_samples)
        with self.lock:
            out = self.engine.generate([tokens], params)[0].outputs[0]
        return {
            "response": self.engine.tokenizer.decode(out.token_ids, skip_special_tokens=True),
            "prompt_tokens": tokens,
            "response_tokens": out.token_ids,
            "response_logprobs": out.logprobs,
            "finish_reason": "stop" if len(out.token_ids) < max_tokens else "length",
            "tool_string": None,
            "is_valid": True,
        }

    def compute_logprobs(self, tokens: list[int]) -> list[float | None]:
        params = SamplingParams(max_tokens=1, prompt_logprobs=0)
        with self.lock:
            return self.engine.generate([tokens], params)[0].prompt_logprobs


def generate(backend, requests) -> list[Any]:
    samples: dict[int, Any] = {}
    backend.generate(requests, lambda k, s: samples.__setitem__(k, s))
    return [samples[k] for k in range(len(requests))]


# ---- TinkerBackend over the SDK-shaped stand-in --------------------------------------------


def test_generate_and_score_are_the_engines_numbers_in_float32(tinker, engine):
    (sample,) = generate(tinker, [(PROMPT, GREEDY)])
    expected = engine.generate([PROMPT], GREEDY)[0].outputs[0]
    assert sample.token_ids == expected.token_ids and sample.finish_reason == "length"
    assert sample.logprobs == pytest.approx(expected.logprobs, abs=1e-6)  # float32 arrays
    assert sample.weight_versions == [UNKNOWN_VERSION] * len(sample.token_ids)
    assert tinker.policy_version == UNKNOWN_VERSION
    (score,) = tinker.score([(PROMPT, sample.token_ids)])
    assert score == pytest.approx(engine.score(PROMPT, sample.token_ids), abs=1e-6)


def test_sampling_params_reach_the_sdk_types(tinker, engine):
    eos = engine.tokenizer.eos_token_id
    cases = [
        (SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=3, max_tokens=5), None),
        (SamplingParams(max_tokens=5, ignore_eos=True), []),
        (SamplingParams(max_tokens=5, stop_token_ids=[20]), [20, eos]),
        (SamplingParams(max_tokens=5, stop=["="]), ["="]),
    ]
    generate(tinker, [(PROMPT, params) for params, _ in cases])
    sent = [call["sampling_params"] for call in tinker.client.calls]
    assert all(isinstance(sp, tinker_types().SamplingParams) for sp in sent)
    assert [call["num_samples"] for call in tinker.client.calls] == [1] * 4
    first = sent[0]
    assert (first.temperature, first.top_p, first.top_k, first.seed, first.max_tokens) == (
        0.7,
        0.9,
        20,
        3,
        5,
    )
    assert [sp.stop for sp in sent] == [stop for _, stop in cases]


def test_what_tinker_cannot_sample_is_refused_before_anything_is_sent(tinker):
    refused = [
        (SamplingParams(min_p=0.1), "min_p"),
        (SamplingParams(repetition_penalty=1.2), "repetition_penalty"),
        (SamplingParams(stop=["x"], stop_token_ids=[3]), "both strings and token ids"),
        (SamplingParams(stop=["x"], ignore_eos=True), "ignore EOS"),
    ]
    for params, what in refused:
        with pytest.raises(BackendUnsupported, match=f"the tinker backend cannot.*{what}") as info:
            generate(tinker, [(PROMPT, GREEDY), (PROMPT, params)])
        assert info.value.backend == "tinker"
    assert tinker.client.calls == []


def test_stop_reasons_say_which_stop_matched(tinker, engine):
    prompt = engine.tokenizer.encode("What is 2+3?")  # greedy: "</tool_call>111111111111233"
    two = engine.tokenizer.encode("2", add_special_tokens=False)[-1]
    by_id, by_text = generate(
        tinker,
        [
            (prompt, SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[two])),
            (prompt, SamplingParams(temperature=0, max_tokens=30, stop=["3"])),
        ],
    )
    assert by_id.finish_reason == "stop" and by_id.stop_reason == two == by_id.token_ids[-1]
    assert by_text.finish_reason == "stop" and by_text.stop_reason == "3"


def test_a_failing_request_fails_alone(tinker, engine):
    bad_prompt = [len(engine.tokenizer) + 1000]
    bad, text, good = generate(tinker, [(bad_prompt, GREEDY), ("1+1=", GREEDY), (PROMPT, GREEDY)])
    assert bad.error and bad.finish_reason == "error" and not bad.token_ids
    assert text.error and "token ids" in text.error  # a backend takes ids, never text
    assert good.error is None and good.token_ids


def test_what_a_sampling_client_cannot_do_says_why(tinker):
    pair = [(PROMPT, [20, 21])]
    checks = [
        (lambda: tinker.score(pair, temperature=0.7), "score at temperature 0.7"),
        (lambda: tinker.logits(pair), "return logits"),
        (lambda: tinker.update_weights({}), "update weights: .*TrainingClient"),
        (lambda: tinker.load_adapter("a", "/a"), "load an adapter"),
    ]
    for action, what in checks:
        with pytest.raises(BackendUnsupported, match=f"the tinker backend cannot {what}"):
            action()
    with pytest.raises(ValueError, match="pairs"):
        tinker.score([(PROMPT, [])])
    tinker.close()
    tinker.close()


def test_construction_checks_the_client_and_the_sdk(engine, stand_in, monkeypatch):
    with pytest.raises(TypeError, match="SamplingClient"):
        TinkerBackend(object(), engine.tokenizer)
    built = create_backend("tinker", sampling_client=stand_in)
    assert isinstance(built, TinkerBackend) and built.name == "tinker"
    monkeypatch.setitem(sys.modules, "tinker", None)  # as if the SDK were not installed
    with pytest.raises(ImportError, match=r"rlserve\[tinker\]"):
        TinkerBackend(stand_in, engine.tokenizer)


def test_finished_unwraps_api_futures_and_reports_failures():
    from concurrent.futures import Future

    class Wrapped:  # an APIFuture-like object: only .future() is a concurrent future
        def __init__(self, future: Future) -> None:
            self._future = future

        def future(self) -> Future:
            return self._future

    ok, broken = Future(), Future()
    ok.set_result("done")
    broken.set_exception(RuntimeError("lost"))
    results = dict(finished({0: Wrapped(ok), 1: broken}))
    assert results[0] == "done" and "lost" in results[1].error


# ---- ServiceBackend over a service holder --------------------------------------------------


def test_service_holder_samples_and_scores_the_given_ids(engine):
    backend = ServiceBackend(HolderStandIn(engine), engine.tokenizer)
    prompt = engine.tokenizer.encode("What is 2+3?")
    sample, merged = generate(backend, [(prompt, GREEDY), (UNMERGED, GREEDY)])
    expected = engine.generate([prompt], GREEDY)[0].outputs[0]
    assert sample.token_ids == expected.token_ids and sample.logprobs == expected.logprobs
    assert sample.weight_versions == [UNKNOWN_VERSION] * len(sample.token_ids)
    assert merged.error and "re-tokenised" in merged.error  # never silently other ids
    (score,) = backend.score([(prompt, sample.token_ids)])
    assert score == pytest.approx(expected.logprobs, abs=1e-5)
    assert backend.policy_version == UNKNOWN_VERSION


def test_service_holder_limits_are_stated(engine):
    backend = ServiceBackend(HolderStandIn(engine, with_scores=False), engine.tokenizer)
    boom = engine.tokenizer.encode("boom")
    fine_prompt = engine.tokenizer.encode("1+1=")
    failed, fine = generate(backend, [(boom, GREEDY), (fine_prompt, GREEDY)])
    assert "service unavailable" in failed.error and fine.error is None
    for action, what in [
        (lambda: generate(backend, [(PROMPT, SamplingParams(top_p=0.5))]), "sample with top_p"),
        (lambda: generate(backend, [(PROMPT, SamplingParams(seed=1))]), "sample with seed"),
        (lambda: backend.score([(PROMPT, [20])]), "score"),
        (lambda: backend.logits([(PROMPT, [20])]), "return logits"),
        (lambda: backend.update_weights("/w"), "update weights"),
        (lambda: backend.load_adapter("a", "/a"), "load an adapter"),
    ]:
        with pytest.raises(BackendUnsupported, match=f"the tinker backend cannot {what}"):
            action()
    scoring = ServiceBackend(HolderStandIn(engine), engine.tokenizer)
    with pytest.raises(BackendUnsupported, match="temperature"):
        scoring.score([(PROMPT, [20])], temperature=0.5)
    with pytest.raises(TypeError, match="sample_from_prompt"):
        ServiceBackend(object(), engine.tokenizer)
    with pytest.raises(ValueError, match="max_concurrency"):
        ServiceBackend(HolderStandIn(engine), engine.tokenizer, max_concurrency=0)
    built = create_backend("tinker", service=HolderStandIn(engine))
    assert isinstance(built, ServiceBackend)
