"""Cancelling requests of a running `generate` (InferenceBackend's cancellation contract):
`on_done` (or its `poll()`) returns indices to cancel; each cancelled request that had not
finished is reported once, as finish_reason "abort" with what it had sampled; the native
engine frees its KV blocks at once, the other backends never send what had not started."""

from __future__ import annotations

import pytest

from rlserve import SamplingParams
from rlserve.backends import EngineBackend, Sample
from rlserve.backends.base import CANCEL_REASON
from tests.support.remote_backends import dialect_backend, remote_server, tinker_backend
from tests.support.servers import wait_until

SHORT = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


class Recorder:
    """An on_done that records every report and cancels `cancel` after the first one;
    `blocks()` (if given) is read at each report."""

    def __init__(self, cancel: list[int], blocks=None) -> None:
        self.cancel = cancel
        self.blocks = blocks
        self.reports: list[tuple[int, Sample, int | None]] = []

    def __call__(self, k: int, sample: Sample) -> list[int]:
        used = self.blocks() if self.blocks is not None else None
        self.reports.append((k, sample, used))
        return self.cancel if len(self.reports) == 1 else []

    def by_index(self) -> dict[int, Sample]:
        indices = [k for k, _, _ in self.reports]
        assert sorted(indices) == sorted(set(indices)), "a request was reported twice"
        return {k: s for k, s, _ in self.reports}


def prompt(backend) -> list[int]:
    return backend.tokenizer.encode("What is 12 + 30?")


@pytest.fixture
def native(make_engine):
    return EngineBackend(make_engine(num_blocks=64, block_size=8))


def test_native_cancel_aborts_in_the_engine_and_frees_kv_at_once(native):
    engine = native.engine
    ids = prompt(native)
    on_done = Recorder([1, 2, 3], blocks=lambda: engine.block_manager.num_used_blocks)
    native.generate([(ids, SHORT), (ids, LONG), (ids, LONG), (ids, LONG)], on_done)
    samples = on_done.by_index()
    assert sorted(samples) == [0, 1, 2, 3]
    assert samples[0].finish_reason == "length" and len(samples[0].token_ids) == 2
    for k in (1, 2, 3):
        s = samples[k]
        assert (s.finish_reason, s.stop_reason) == ("abort", CANCEL_REASON)
        # What it had sampled when cancelled: a few tokens, far fewer than it asked for.
        assert 1 <= len(s.token_ids) < LONG.max_tokens
        assert len(s.logprobs) == len(s.token_ids) == len(s.weight_versions)
    # The cancelled ones are reported after their abort: no KV blocks held any more.
    assert [used for k, _, used in on_done.reports if k != 0] == [0, 0, 0]
    assert not engine.has_unfinished_requests()


def test_native_poll_cancels_while_nothing_finishes(native):
    class Polling(Recorder):
        polls = 0

        def poll(self) -> list[int]:
            self.polls += 1
            return [1] if self.polls == 3 else []

    ids = prompt(native)
    on_done = Polling([])
    native.generate([(ids, LONG), (ids, LONG)], on_done)
    samples = on_done.by_index()
    assert samples[0].finish_reason == "length" and len(samples[0].token_ids) == 48
    assert samples[1].finish_reason == "abort" and len(samples[1].token_ids) < 48
    assert on_done.reports[0][0] == 1  # reported at once, before the other finished


def test_native_cancel_before_a_request_is_added(native):
    ids = prompt(native)
    too_long = [5] * 5000  # rejected when added: reported first, then cancels request 2
    on_done = Recorder([2])
    native.generate([(too_long, SHORT), (ids, SHORT), (ids, LONG)], on_done)
    samples = on_done.by_index()
    assert samples[0].error is not None
    assert samples[1].finish_reason == "length"
    assert samples[2].finish_reason == "abort" and samples[2].token_ids == []


def test_cancelling_a_finished_request_does_nothing_and_bad_indices_are_refused(native):
    ids = prompt(native)
    on_done = Recorder([0])  # request 0 is the one that just finished
    native.generate([(ids, SHORT), (ids, SHORT)], on_done)
    assert [s.finish_reason for s in on_done.by_index().values()] == ["length", "length"]
    with pytest.raises(ValueError, match=r"request indices in \[0, 2\)"):
        native.generate([(ids, SHORT), (ids, LONG)], Recorder([7]))
    with pytest.raises(ValueError, match="on_done must return request indices"):
        native.generate([(ids, SHORT), (ids, LONG)], lambda k, s: 1)
    assert not native.engine.has_unfinished_requests()  # the failed call aborted the rest


def test_huggingface_skips_requests_not_started():
    from rlserve.backends.huggingface import HuggingFaceBackend

    backend = HuggingFaceBackend()
    try:
        ids = prompt(backend)
        on_done = Recorder([1, 2])
        backend.generate([(ids, SHORT), (ids, SHORT), (ids, SHORT)], on_done)
    finally:
        backend.close()
    samples = on_done.by_index()
    assert len(samples[0].token_ids) == 2
    assert [samples[k].finish_reason for k in (1, 2)] == ["abort", "abort"]
    assert samples[1].token_ids == [] and samples[1].stop_reason == CANCEL_REASON


def test_remote_never_sends_cancelled_requests(tmp_path):
    with remote_server(tmp_path) as server:
        backend = dialect_backend(server, "rlserve", max_concurrency=1)
        try:
            before = server.engine.stats()["requests_finished"]
            ids = prompt(backend)
            on_done = Recorder([1, 2])
            backend.generate([(ids, SHORT), (ids, LONG), (ids, LONG)], on_done)
            # Request 1 may have been in flight when 0 came back: let the server finish it.
            assert wait_until(lambda: not server.engine.has_unfinished_requests())
            sent = server.engine.stats()["requests_finished"] - before
        finally:
            backend.close()
    samples = on_done.by_index()
    assert sorted(samples) == [0, 1, 2]
    assert len(samples[0].token_ids) == 2
    assert [samples[k].finish_reason for k in (1, 2)] == ["abort", "abort"]
    assert samples[1].token_ids == [] and samples[2].stop_reason == CANCEL_REASON
    # One worker: request 1 may already have been sent when 0 came back; 2 never was.
    assert sent in (1, 2)


def test_tinker_reports_cancelled_requests_once():
    with tinker_backend() as backend:
        ids = prompt(backend)
        on_done = Recorder([1])
        backend.generate([(ids, SHORT), (ids, SHORT)], on_done)
    samples = on_done.by_index()
    assert sorted(samples) == [0, 1]
    first = on_done.reports[0][0]
    other = 1 - first
    if first == 0:  # request 1 had not come back yet: cancelled
        assert samples[other].finish_reason == "abort"
    else:  # request 1 finished first: cancelling it afterwards does nothing
        assert samples[other].finish_reason == "length"
