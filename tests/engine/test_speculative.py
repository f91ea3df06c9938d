"""Speculative decoding keeps every RL contract: outputs with speculation on are those of
the same engine with it off (its plain decode path), token for token.

One engine per proposer; "off" is the same engine with its speculator removed, so both
runs share weights and code and differ only in speculation. The prefix cache is reset
between runs so neither reuses the other's KV.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from rlserve import Engine
from rlserve.config import BUNDLED_MODEL
from rlserve.engine.ngram_proposer import NgramProposer
from rlserve.engine.spec_rows import AlwaysPays
from rlserve.engine.structured import StructuredOutput
from rlserve.outputs import RequestOutput
from rlserve.sampling_params import SamplingParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "max_batch_size": 64}
DRAFT = {"method": "draft", "draft_model": str(BUNDLED_MODEL / "draft"), "max_batch_size": 64}
GREEDY = SamplingParams(max_tokens=16, temperature=0, logprobs=2)


@pytest.fixture(scope="module")
def spec_engines(make_engine) -> dict[str, Engine]:
    return {"ngram": timing_free(make_engine(speculative=NGRAM))}


def timing_free(engine: Engine) -> Engine:
    """Speculate wherever the knobs allow, whatever steps take: these tests count what
    was speculated (the cost rule is tested with fed timings, test_speculative_costs.py)."""
    engine.step_runner.speculator.costs = AlwaysPays()
    return engine


@pytest.fixture(scope="module")
def engine(spec_engines) -> Engine:
    return spec_engines["ngram"]


def engine_for(method: str, spec_engines: dict[str, Engine], make_engine) -> Engine:
    if method not in spec_engines:
        spec_engines[method] = timing_free(make_engine(speculative=DRAFT))
    return spec_engines[method]


@contextmanager
def speculation_off(engine: Engine) -> Iterator[None]:
    speculator = engine.step_runner.speculator
    engine.step_runner.speculator = None
    engine.reset_prefix_cache()
    try:
        yield
    finally:
        engine.step_runner.speculator = speculator
        engine.reset_prefix_cache()


def both(engine: Engine, run: Callable[[], list[RequestOutput]]) -> tuple[list, list]:
    """run() with speculation on (from a fresh running acceptance: earlier tests' low
    acceptance may have turned it off), then off; asserts it really speculated."""
    engine.step_runner.speculator.acceptance = 1.0
    engine.step_runner.speculator.settle = 0
    before = engine.stats()["spec_accepted_tokens"]
    on = run()
    assert engine.stats()["spec_accepted_tokens"] > before, "nothing was accepted"
    with speculation_off(engine):
        off = run()
    return on, off


def drain(
    engine: Engine, outs: dict[str, RequestOutput] | None = None, steps: int | None = None
) -> dict[str, RequestOutput]:
    """Step (until idle, or `steps` times), merging deltas into totals by request id."""
    outs = {} if outs is None else outs
    while engine.has_unfinished_requests() and (steps is None or steps > 0):
        steps = None if steps is None else steps - 1
        for delta in engine.step():
            if delta.request_id in outs:
                outs[delta.request_id].merge(delta)
            else:
                outs[delta.request_id] = delta
    return outs


def chat_prompts(engine: Engine, n: int) -> list[list[int]]:
    tok = engine.tokenizer
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"What is {3 + i} + {4 * i + 1}?"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(n)
    ]
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


def repetitive_prompts(n: int) -> list[list[int]]:
    return [[20 + i % 5, 30 + i, 41, 42, 43] * (3 + i % 4) for i in range(n)]


def assert_same(on: list[RequestOutput], off: list[RequestOutput]) -> None:
    assert len(on) == len(off)
    for a, b in zip(on, off, strict=True):
        assert len(a.outputs) == len(b.outputs)
        for x, y in zip(a.outputs, b.outputs, strict=True):
            assert x.token_ids == y.token_ids
            assert x.text == y.text
            assert (x.finish_reason, x.stop_reason) == (y.finish_reason, y.stop_reason)
            assert x.weight_versions == y.weight_versions
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
            assert x.sampling_logprobs == pytest.approx(y.sampling_logprobs, abs=1e-4)
            if y.top_logprobs is not None:
                assert [sorted(t) for t in x.top_logprobs] == [sorted(t) for t in y.top_logprobs]


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_greedy_32_requests_equal_without_speculation(method, spec_engines, make_engine):
    engine = engine_for(method, spec_engines, make_engine)
    prompts = chat_prompts(engine, 16) + repetitive_prompts(16)
    on, off = both(engine, lambda: engine.generate(prompts, GREEDY))
    assert_same(on, off)


def test_verify_rows_on_the_reference_attention_path(engine, monkeypatch):
    # Verify rows attend as decodes; without the CPU kernel (as on CUDA) that is the
    # gathered-pages SDPA path, several rows of one block table in a group.
    monkeypatch.setenv("RLSERVE_PAGED_KERNEL", "0")
    prompts = repetitive_prompts(6)
    on, off = both(engine, lambda: engine.generate(prompts, GREEDY))
    assert_same(on, off)


def test_logprobs_are_the_targets_own_score(engine):
    prompts = repetitive_prompts(4)
    params = SamplingParams(max_tokens=16, temperature=0.7, seed=3)
    outs = engine.generate(prompts, params)
    for prompt, out in zip(prompts, outs, strict=True):
        sample = out.outputs[0]
        scored = engine.score(prompt, sample.token_ids, temperature=0.7)
        assert scored == pytest.approx(sample.logprobs, abs=1e-4)


def test_per_request_counts_add_up_to_the_engine_counts(engine):
    engine.step_runner.speculator.acceptance = 1.0
    before = engine.stats()
    samples = [out.outputs[0] for out in engine.generate(repetitive_prompts(4), GREEDY)]
    after = engine.stats()
    for key in ("spec_proposed_tokens", "spec_accepted_tokens"):
        assert sum(getattr(s, key) for s in samples) == after[key] - before[key]
    assert sum(s.spec_verify_steps for s in samples) == (
        after["spec_sequence_steps"] - before["spec_sequence_steps"]
    )
    assert any(s.spec_accepted_tokens for s in samples)
    for s in samples:  # each verification step adds the accepted guesses plus one token
        assert s.spec_accepted_tokens + s.spec_verify_steps <= len(s.token_ids)


def test_seeded_requests_alone_in_a_batch_and_without_speculation(engine):
    prompts = repetitive_prompts(4) + chat_prompts(engine, 4)
    params = [
        SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=100 + i) for i in range(8)
    ]
    batched, off = both(engine, lambda: engine.generate(prompts, params))
    alone = [engine.generate([p], [sp])[0] for p, sp in zip(prompts, params, strict=True)]
    assert_same(batched, off)
    assert_same(alone, off)


def test_stops_inside_an_accepted_run_end_the_sequence_there(engine):
    # Greedy, the model answers this with 648 20 18 18, seven 19s, then 20s: runs of
    # repeated tokens, which n-gram guesses right.
    prompt = [20, 30, 41, 42, 43] * 3
    params = [
        SamplingParams(max_tokens=30, temperature=0, min_tokens=12, stop_token_ids=[20]),
        SamplingParams(max_tokens=15, temperature=0),
        SamplingParams(max_tokens=30, temperature=0, stop=["2222"]),
        SamplingParams(
            max_tokens=30, temperature=0, stop=["2222"], include_stop_str_in_output=True
        ),
    ]
    on, off = both(engine, lambda: engine.generate([prompt] * len(params), params))
    assert_same(on, off)
    assert len(on[0].outputs[0].token_ids) == 13 and on[0].outputs[0].stop_reason == 20
    assert len(on[1].outputs[0].token_ids) == 15
    assert on[2].outputs[0].text.endswith("1") and on[3].outputs[0].text.endswith("2222")


def test_kv_blocks_follow_accepted_tokens_and_none_leak(engine):
    bm = engine.block_manager
    ids = [
        engine.add_request(p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        for p in repetitive_prompts(6)
    ]
    aborted = False
    while engine.has_unfinished_requests():
        engine.step()
        running = engine.scheduler.running
        for seq in running:  # rejected guesses' blocks were freed at once
            assert len(seq.block_table) <= bm.blocks_needed(seq.num_tokens)
        in_use = {b for seq in running for b in seq.block_table}
        assert bm.num_used_blocks == len(in_use)
        if not aborted and engine.stats()["spec_accepted_tokens"]:
            aborted = engine.abort(ids[0])
    assert aborted
    assert bm.num_used_blocks == 0


def test_mixed_batch_only_plain_requests_speculate(engine):
    grammar = StructuredOutput(regex="[0-9]{3}")
    prompt = repetitive_prompts(1)[0]
    params = {
        "plain": SamplingParams(max_tokens=16, temperature=0),
        "seeded": SamplingParams(max_tokens=16, temperature=0.8, seed=5, n=2),
        "penalty": SamplingParams(max_tokens=16, temperature=0, presence_penalty=0.5),
        "bias": SamplingParams(max_tokens=16, temperature=0, logit_bias={41: 2.0}),
        "grammar": SamplingParams(max_tokens=16, temperature=0, structured=grammar),
        "choices": SamplingParams(max_tokens=16, temperature=0, prefix_choices=["41 42"]),
    }
    seqs: dict[str, list] = {}

    def run() -> list[RequestOutput]:
        ids = {name: engine.add_request(prompt, p) for name, p in params.items()}
        for name, rid in ids.items():
            seqs.setdefault(name, engine._requests[rid].seqs)  # the run with speculation
        outs = drain(engine)
        return [outs[ids[name]] for name in params]

    on, off = both(engine, run)
    assert_same(on, off)
    proposed = {name: sum(s.spec_proposed_tokens for s in ss) for name, ss in seqs.items()}
    assert proposed["penalty"] == proposed["bias"] == proposed["grammar"] == 0
    assert proposed["choices"] == 0
    assert proposed["plain"] > 0 and proposed["seeded"] > 0  # n = 2 children speculate


def test_prefix_cache_hashes_accepted_output_blocks(engine):
    prompt = repetitive_prompts(3)[2]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)

    def turns() -> list[RequestOutput]:
        first = engine.generate([prompt], params)[0]
        follow_up = prompt + first.outputs[0].token_ids + [5]
        return [first, engine.generate([follow_up], params)[0]]

    on, off = both(engine, turns)
    assert_same(on, off)
    computed = len(prompt) + len(on[0].outputs[0].token_ids) - 1  # the last has no KV
    block = engine.config.block_size
    assert on[1].num_cached_tokens == computed // block * block == off[1].num_cached_tokens


def test_weight_update_between_steps_versions_per_token(engine):
    from safetensors.torch import load_file

    original = BUNDLED_MODEL / "model.safetensors"
    perturbed = {k: v * 1.02 if "mlp" in k else v for k, v in load_file(original).items()}
    prompt = repetitive_prompts(2)[1]
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    switch_at: list[int] = []

    def run() -> list[RequestOutput]:
        rid = engine.add_request(prompt, params)
        seq = engine._requests[rid].seqs[0]
        outs: dict[str, RequestOutput] = {}
        while engine.has_unfinished_requests():
            drain(engine, outs, steps=1)
            if seq.num_output_tokens >= (switch_at[0] if switch_at else 10) and not seq.is_finished:
                if not switch_at:
                    switch_at.append(seq.num_output_tokens)
                if seq.num_output_tokens == switch_at[0]:
                    engine.update_weights(perturbed)
        engine.update_weights(original)
        return [outs[rid]]

    on, off = both(engine, run)
    versions = [o.outputs[0].weight_versions for o in (on[0], off[0])]
    relative = [[v - vs[0] for v in vs] for vs in versions]
    assert relative[0] == relative[1]
    assert relative[0][switch_at[0] - 1] == 0 and relative[0][switch_at[0]] == 1
    assert on[0].outputs[0].token_ids == off[0].outputs[0].token_ids


def test_lora_requests_speculate(engine, tmp_path):
    from tests.support.checkpoints import save_lora

    engine.load_lora("spec-lora", save_lora(BUNDLED_MODEL, tmp_path / "lora"))
    try:
        prompts = repetitive_prompts(3)
        on, off = both(engine, lambda: engine.generate(prompts, GREEDY, lora_name="spec-lora"))
        assert_same(on, off)
        plain = engine.generate(prompts, GREEDY)
        assert any(
            a.outputs[0].logprobs != pytest.approx(b.outputs[0].logprobs, abs=1e-4)
            for a, b in zip(on, plain, strict=True)
        ), "the adapter changed nothing"
    finally:
        engine.unload_lora("spec-lora")


class Recording(NgramProposer):
    """The real n-gram proposer, recording what the engine asks of it."""

    def __init__(self, mode: str = "right") -> None:
        super().__init__(1, 4)
        self.mode = mode
        self.calls, self.released, self.resets = 0, [], 0

    def propose(self, inputs):
        self.calls += 1
        guesses = super().propose(inputs)
        if self.mode == "wrong":  # a guess the model never picks after these prompts
            return [[3] * i.max_tokens for i in inputs]
        if self.mode == "raise":
            raise RuntimeError("proposer broke")
        if self.mode == "bad ids":
            return [[-1, 10**9] for _ in inputs]
        return guesses

    def release(self, key):
        self.released.append(key)

    def reset(self):
        self.resets += 1


@contextmanager
def proposer(engine: Engine, replacement: Recording, **config) -> Iterator[Recording]:
    from dataclasses import replace

    spec = engine.step_runner.speculator
    saved = spec.proposer, spec.config, spec.acceptance, spec.steps_off, spec.settle
    spec.proposer, spec.config = replacement, replace(spec.config, **config)
    spec.acceptance, spec.steps_off, spec.settle = 1.0, 0, 0
    try:
        yield replacement
    finally:
        spec.proposer, spec.config, spec.acceptance, spec.steps_off, spec.settle = saved


def test_release_on_finish_and_abort_reset_on_weight_update(engine):
    with proposer(engine, Recording()) as rec:
        rid = engine.add_request(repetitive_prompts(1)[0], SamplingParams(max_tokens=8, n=2))
        engine.generate(repetitive_prompts(2), GREEDY)
        engine.abort(rid)
        engine.step()
        assert (rid, 0) in rec.released and (rid, 1) in rec.released
        assert len(rec.released) == 4
        resets = rec.resets
        engine.update_weights(BUNDLED_MODEL / "model.safetensors")
        engine.generate(repetitive_prompts(1), GREEDY)
        assert rec.resets == resets + 1


def test_speculation_turns_off_for_large_batches(engine):
    with proposer(engine, Recording(), max_batch_size=2) as rec:
        prompts = [[9, 10, 11] * 4] * 3
        engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
        assert rec.calls == 0
        engine.generate(prompts[:2], SamplingParams(max_tokens=12, temperature=0))
        assert rec.calls > 0


def test_a_batch_that_shrinks_under_the_cap_waits_before_speculating(engine):
    from rlserve.engine.speculative import SETTLE_STEPS

    long = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    short = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    with proposer(engine, Recording(), max_batch_size=2) as rec:
        for params in (long, short, short):
            engine.add_request([9, 10, 11] * 4, params)
        calls = []  # (sequences running before the step, proposer calls after it)
        while engine.has_unfinished_requests():
            running = len(engine.scheduler.running)
            engine.step()
            calls.append((running, rec.calls))
    shrunk = next(i for i, (running, _) in enumerate(calls) if running == 1)
    assert all(n == 0 for _, n in calls[: shrunk + SETTLE_STEPS])
    assert calls[shrunk + SETTLE_STEPS][1] == 1


def test_speculation_turns_off_while_guesses_fail_and_probes(engine):
    params = SamplingParams(max_tokens=80, temperature=0, ignore_eos=True)
    prompt = repetitive_prompts(1)[0]
    with proposer(engine, Recording("wrong"), min_acceptance=0.85) as rec:
        on = engine.generate([prompt], params)
        # 79 decode steps, one token each. The running acceptance goes 1.0 -> 0.9 -> 0.81
        # (< 0.85: off) in 2 calls; then one probe, 64 steps later.
        assert rec.calls == 3
    with speculation_off(engine):
        off = engine.generate([prompt], params)
    assert_same(on, off)


@pytest.mark.parametrize("mode", ["raise", "bad ids"])
def test_a_broken_proposer_costs_speed_not_requests(engine, mode):
    prompts = repetitive_prompts(3)
    with proposer(engine, Recording(mode)) as rec:
        on = engine.generate(prompts, GREEDY)
        assert rec.calls > 0
    with speculation_off(engine):
        off = engine.generate(prompts, GREEDY)
    assert_same(on, off)
    assert all(o.error is None for o in on)
