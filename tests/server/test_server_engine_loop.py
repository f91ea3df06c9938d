"""The engine thread against a scripted fake engine: batching window, aborts, failures."""

from __future__ import annotations

import asyncio
import time

import pytest

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.sampling_params import SamplingParams
from rlserve.server.engine_loop import (
    EngineFailure,
    EngineLoop,
    EngineUnavailable,
    Overloaded,
    TooManySequences,
)


class FakeEngine:
    """Each step gives every request one token until it has `max_tokens` (the part of
    EngineCore's interface the loop drives)."""

    def __init__(self, fail_on_step: int | None = None, step_s: float = 0.0) -> None:
        self.requests: dict[str, list[int]] = {}
        self.limits: dict[str, int] = {}
        self.aborted: list[str] = []
        self.batches: list[list[str]] = []
        self.fail_on_step = fail_on_step
        self.step_s = step_s
        self.paused: str | None = None  # never paused: the control plane is not under test
        self.adapters: dict[str, object] = {}

    def add_request(
        self, prompt, params: SamplingParams, request_id: str, *, lora_name: str | None = None
    ) -> str:
        if prompt == "bad":
            raise ValueError("prompt is bad")
        self.requests[request_id] = []
        self.limits[request_id] = params.max_tokens
        return request_id

    def abort(self, request_id: str, reason: str | None = None) -> bool:
        self.aborted.append(request_id)
        return self.requests.pop(request_id, None) is not None

    @property
    def num_running(self) -> int:
        return len(self.requests)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        time.sleep(self.step_s)
        self.batches.append(list(self.requests))
        if self.fail_on_step == len(self.batches):
            raise RuntimeError("boom")
        outs = []
        for rid, tokens in list(self.requests.items()):
            tokens.append(len(tokens))
            done = len(tokens) >= self.limits[rid]
            reason = "length" if done else None
            out = CompletionOutput(0, "x", [tokens[-1]], [-0.5], finish_reason=reason)
            outs.append(RequestOutput(rid, None, [1, 2], [out], finished=done))
            if done:
                del self.requests[rid]
        return outs

    def stats(self) -> dict[str, int]:
        return {
            "num_running": len(self.requests),
            "num_waiting": 0,
            "num_waiting_sequences": 0,
            "generated_tokens": 0,
        }


def _loop(engine: FakeEngine, flush_ms: float = 0.0, max_queue: int = 100) -> EngineLoop:
    loop = EngineLoop(engine, max_batch=8, flush_interval_s=flush_ms / 1000, max_queue=max_queue)
    loop.start()
    return loop


async def _run(loop: EngineLoop, prompts: list, max_tokens: int = 2) -> list[list[int]]:
    group = loop.submit(prompts, SamplingParams(max_tokens=max_tokens))
    await group.accepted()
    tokens: list[list[int]] = [[] for _ in prompts]
    async for index, delta in group:
        tokens[index] += delta.outputs[0].token_ids
    return tokens


def test_requests_arriving_within_the_flush_window_share_the_first_step() -> None:
    engine = FakeEngine()
    loop = _loop(engine, flush_ms=300)

    async def main() -> None:
        first = asyncio.create_task(_run(loop, ["a"]))
        await asyncio.sleep(0.05)
        assert await asyncio.gather(first, _run(loop, ["b"])) == [[[0, 1]], [[0, 1]]]

    asyncio.run(main())
    loop.stop()
    assert len(engine.batches[0]) == 2


def test_without_a_flush_window_the_first_request_starts_alone() -> None:
    engine = FakeEngine(step_s=0.02)
    loop = _loop(engine, flush_ms=0)

    async def main() -> None:
        first = asyncio.create_task(_run(loop, ["a"], max_tokens=5))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, _run(loop, ["b"]))

    asyncio.run(main())
    loop.stop()
    assert len(engine.batches[0]) == 1 and max(len(b) for b in engine.batches) == 2


def test_a_bad_prompt_rejects_the_whole_group() -> None:
    engine = FakeEngine()
    loop = _loop(engine)
    with pytest.raises(ValueError, match="bad"):
        asyncio.run(_run(loop, ["good", "bad"]))
    loop.stop()
    assert len(engine.aborted) == 1 and not engine.requests


def test_abort_reaches_the_engine() -> None:
    engine = FakeEngine(step_s=0.01)
    loop = _loop(engine)

    async def main() -> None:
        group = loop.submit(["a"], SamplingParams(max_tokens=1000))
        await group.accepted()
        async for _ in group:
            group.abort()
            break

    asyncio.run(main())
    time.sleep(0.1)
    loop.stop()
    assert engine.aborted and not engine.requests


def test_step_failure_fails_running_groups_and_loop_survives() -> None:
    engine = FakeEngine(fail_on_step=1)
    loop = _loop(engine)
    with pytest.raises(EngineFailure, match="boom"):
        asyncio.run(_run(loop, ["a"]))
    assert asyncio.run(_run(loop, ["b"])) == [[0, 1]]
    loop.stop()


def test_queue_limit_and_stopped_loop() -> None:
    engine = FakeEngine(step_s=0.05)
    loop = _loop(engine, max_queue=2)

    async def main() -> None:
        loop._admission.queued = 2  # as if two requests were still in the inbox
        with pytest.raises(Overloaded, match="--max-queue 2"):
            loop.submit(["a"], SamplingParams())
        loop._admission.queued = 0

    asyncio.run(main())
    loop.stop()

    async def after_stop() -> None:
        with pytest.raises(EngineUnavailable):
            loop.submit(["a"], SamplingParams())

    asyncio.run(after_stop())


def test_a_closing_loop_refuses_admission_but_keeps_running() -> None:
    """After close() nothing is admitted (check_admissible and submit agree) while the
    thread still runs for what is in flight; after stop() it does not run."""
    loop = _loop(FakeEngine(), max_queue=4)
    loop.check_admissible(4)
    with pytest.raises(TooManySequences, match="--max-queue"):
        loop.check_admissible(5)
    loop.close(grace_s=60)
    assert loop.running and not loop.alive and loop.idle
    with pytest.raises(EngineUnavailable, match="shutting down"):
        loop.check_admissible(1)
    loop.stop()
    assert not loop.running
