"""Continuous batching, prefix caching, preemption, abort and GRPO groups."""

import pytest

from rlserve import SamplingParams
from tests.support.numeric import max_abs_diff

PROMPTS = [[(7 * i + j) % 300 + 1 for j in range(5 + (i * 13) % 40)] for i in range(32)]


@pytest.fixture(scope="module")
def engine(checkpoints, make_engine):
    return make_engine(checkpoints["qwen3"], num_blocks=512, block_size=4)


def _tokens(outs):
    return [[c.token_ids for c in o.outputs] for o in outs]


def _max_logprob_diff(a, b):
    return max(
        max_abs_diff(ca.logprobs, cb.logprobs)
        for oa, ob in zip(a, b, strict=True)
        for ca, cb in zip(oa.outputs, ob.outputs, strict=True)
    )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_equals_one_at_a_time(engine, temperature):
    params = SamplingParams(temperature=temperature, max_tokens=12, seed=5, ignore_eos=True)
    engine.reset_prefix_cache()
    together = engine.generate(PROMPTS, params)
    alone = []
    for p in PROMPTS:
        engine.reset_prefix_cache()
        alone += engine.generate(p, params)
    assert _tokens(together) == _tokens(alone)
    # Exact equality of logprobs is not promised: CPU matmul kernels round differently for
    # different batch shapes. Measured here: ~1e-6.
    assert _max_logprob_diff(together, alone) < 1e-4


def test_repeated_prompt_hits_prefix_cache_with_same_outputs(engine):
    engine.reset_prefix_cache()
    prompt = list(range(1, 42))
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    first = engine.generate(prompt, params)
    hits_before = engine.stats()["prefix_cache_hit_tokens"]
    second = engine.generate(prompt, params)
    hits = engine.stats()["prefix_cache_hit_tokens"] - hits_before
    assert hits == 40  # every full block of the prompt but the one holding its last token
    assert second[0].num_cached_tokens == 40
    assert _tokens(first) == _tokens(second)
    assert _max_logprob_diff(first, second) < 1e-5


def test_prefix_cache_not_reused_after_weight_update(engine):
    engine.reset_prefix_cache()
    prompt = list(range(50, 90))
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    engine.generate(prompt, params)
    same_weights = {n: t.clone() for n, t in engine.model.hf_weight_targets().items()}
    version = engine.update_weights(same_weights)
    hits_before = engine.stats()["prefix_cache_hit_tokens"]
    out = engine.generate(prompt, params)[0]
    assert engine.stats()["prefix_cache_hit_tokens"] == hits_before
    assert out.outputs[0].weight_versions == [version] * 4
    engine.generate(prompt, params)  # cached now under the new version
    assert engine.stats()["prefix_cache_hit_tokens"] > hits_before


def test_reset_prefix_cache(engine):
    prompt = list(range(100, 130))
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    engine.generate(prompt, params)
    engine.reset_prefix_cache()
    before = engine.stats()["prefix_cache_hit_tokens"]
    engine.generate(prompt, params)
    assert engine.stats()["prefix_cache_hit_tokens"] == before


def test_small_cache_preempts_and_still_matches(checkpoints, make_engine, engine):
    params = SamplingParams(temperature=1.0, max_tokens=24, seed=1, ignore_eos=True)
    small = make_engine(checkpoints["qwen3"], num_blocks=40, block_size=4)
    outs_small = small.generate(PROMPTS[:12], params)
    engine.reset_prefix_cache()
    outs_big = engine.generate(PROMPTS[:12], params)
    assert small.stats()["preemptions"] > 0
    assert _tokens(outs_small) == _tokens(outs_big)
    assert all(len(c.token_ids) == 24 for o in outs_small for c in o.outputs)


def test_chunked_prefill_matches_whole_prefill(checkpoints, make_engine, engine):
    prompt = list(range(1, 200))
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, prompt_logprobs=0)
    chunked = make_engine(
        checkpoints["qwen3"], num_blocks=128, block_size=4, max_num_batched_tokens=32
    )
    a = chunked.generate(prompt, params)[0]
    engine.reset_prefix_cache()
    b = engine.generate(prompt, params)[0]
    assert chunked.stats()["steps"] >= 200 // 32 + 6
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert max_abs_diff(a.prompt_logprobs[1:], b.prompt_logprobs[1:]) < 1e-4


def test_grpo_group_prefills_prompt_once(checkpoints, make_engine):
    engine = make_engine(checkpoints["qwen3"], num_blocks=256, block_size=4)
    prompt = list(range(1, 66))  # 65 tokens: the last block is partial (copy-on-write)
    params = SamplingParams(n=8, temperature=1.0, max_tokens=10, seed=2, ignore_eos=True)
    out = engine.generate(prompt, params)[0]
    stats = engine.stats()
    assert stats["prompt_tokens_computed"] == len(prompt)
    assert len(out.outputs) == 8 and len({tuple(c.token_ids) for c in out.outputs}) == 8
    # Each sample equals the same sample scored alone: shared blocks were not corrupted.
    for c in out.outputs:
        scored = engine.score(prompt, c.token_ids)
        assert max_abs_diff(scored, c.logprobs) < 1e-5


def test_abort_frees_blocks_and_reports(engine):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=50, ignore_eos=True)
    keep = engine.add_request(PROMPTS[0], SamplingParams(max_tokens=5, ignore_eos=True))
    doomed = engine.add_request(PROMPTS[1], params)
    engine.step()
    engine.step()
    assert engine.block_manager.num_used_blocks > 0
    assert engine.abort(doomed) and not engine.abort(doomed)
    assert not engine.abort("no-such-request")
    finals = {}
    while engine.has_unfinished_requests():
        for delta in engine.step():
            if delta.finished:
                finals[delta.request_id] = delta
    assert {c.finish_reason for c in finals[doomed].outputs} == {"abort"}
    assert len(finals[doomed].outputs) == 3
    assert finals[keep].outputs[0].finish_reason == "length"


def test_requests_join_a_running_batch(engine):
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    first = engine.add_request(PROMPTS[2], params)
    tokens = {first: []}
    for _ in range(5):
        tokens[first] += engine.step()[0].outputs[0].token_ids
    second = engine.add_request(PROMPTS[3], params)
    tokens[second] = []
    batch_sizes = []
    while engine.has_unfinished_requests():
        deltas = engine.step()
        batch_sizes.append(len(deltas))
        for d in deltas:
            tokens[d.request_id] += d.outputs[0].token_ids
    assert 2 in batch_sizes  # both advanced in the same step
    alone = engine.generate([PROMPTS[2], PROMPTS[3]], params)
    assert [tokens[first], tokens[second]] == [o.outputs[0].token_ids for o in alone]


def test_each_sample_finish_is_reported_once(engine):
    # Sample 0 is made to stop early (its max_tokens lowered mid-flight); sample 1 goes on.
    lengths = [3, 9]
    rid = engine.add_request(
        PROMPTS[4], SamplingParams(n=2, temperature=1.0, max_tokens=9, seed=4, ignore_eos=True)
    )
    finishes, tokens = {0: 0, 1: 0}, {0: 0, 1: 0}
    engine.step()
    seq0 = engine._requests[rid].seqs[0]
    seq0.params = SamplingParams(
        n=2, temperature=1.0, max_tokens=lengths[0], seed=4, ignore_eos=True
    )
    while engine.has_unfinished_requests():
        for d in engine.step():
            for c in d.outputs:
                tokens[c.index] += len(c.token_ids)
                finishes[c.index] += c.finish_reason is not None
    assert finishes == {0: 1, 1: 1}
    assert tokens[1] == 8  # its first token came with the first step


def test_waiting_sequences_count_the_forks_to_come(engine):
    engine.pause("keep")  # nothing is admitted: both stay waiting
    ids = [
        engine.add_request(PROMPTS[0], SamplingParams(n=3, max_tokens=2)),
        engine.add_request(PROMPTS[1], SamplingParams(max_tokens=2)),
    ]
    stats = engine.stats()
    assert (stats["num_waiting"], stats["num_waiting_sequences"]) == (2, 4)
    engine.resume()
    for request_id in ids:
        engine.abort(request_id)
    engine.step()


def test_a_waiting_prompt_is_hashed_once_not_at_every_step(monkeypatch):
    from rlserve.engine import block_manager as bm
    from rlserve.engine.sequence import Sequence

    calls = []
    real = bm._hash_block
    monkeypatch.setattr(bm, "_hash_block", lambda *args: calls.append(1) or real(*args))
    manager = bm.BlockManager(num_blocks=64, block_size=4, enable_prefix_caching=True)
    seq = Sequence("r", 0, list(range(1, 42)), SamplingParams(), seed=0)
    for _ in range(5):  # what the scheduler asks each step while the head cannot start
        manager.match_prefix(seq, (0, None, None))
    assert len(calls) == 10  # its 10 full blocks before the last token, once
    manager.match_prefix(seq, (1, None, None))  # new weights: hashed again under them
    assert len(calls) == 20
