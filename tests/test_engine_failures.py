"""Failures inside `Engine.step()` land on their culprits only, and lose nothing else.

Most of these inject the fault (a forward that raises for one marked prompt, or for any
batch of more than one sequence): no real input reaches those paths once admission checks
pass, which is exactly why they must be tested this way. The marked prompt starts with
BAD; the injected runner raises before doing anything, the worst case for what it skips.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rlserve import SamplingParams
from rlserve.engine.failures import run_isolating

BAD = 301
GOOD_PROMPTS = [list(range(5, 25)), list(range(30, 61))]
SEEDED_PAIR = SamplingParams(temperature=1.0, seed=3, max_tokens=8, n=2)


@pytest.fixture
def engine(checkpoints, make_engine):
    return make_engine(checkpoints["qwen3"], num_blocks=256, block_size=4, max_num_seqs=16)


def _fail_when(engine, condition) -> list:
    """Make the engine's forward raise when `condition(batch)`; returns the batches it was
    asked to run."""
    run, batches = engine.runner.run, []

    def failing_run(batch, samples, adapters):
        batches.append(batch)
        if condition(batch):
            raise RuntimeError("injected forward failure")
        return run(batch, samples, adapters)

    engine.runner.run = failing_run
    return batches


def _has_bad(batch) -> bool:
    return any(seq.token_ids[0] == BAD for seq in batch.seqs)


def _drain(engine) -> dict[str, tuple[dict[int, list[int]], object]]:
    """Step until idle; by request id: (token ids by sample index, final delta)."""
    tokens: dict[str, dict[int, list[int]]] = {}
    finals = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for c in out.outputs:
                tokens.setdefault(out.request_id, {}).setdefault(c.index, []).extend(c.token_ids)
            if out.finished:
                finals[out.request_id] = out
    return {rid: (tokens.get(rid, {}), out) for rid, out in finals.items()}


def _reference(engine, prompts, params) -> list[dict[int, list[int]]]:
    return [{c.index: c.token_ids for c in out.outputs} for out in engine.generate(prompts, params)]


def test_a_failed_forward_keeps_the_copy_on_write_copies_of_the_others(engine):
    expected = _reference(engine, GOOD_PROMPTS[1:], SEEDED_PAIR)[0]
    batches = _fail_when(engine, _has_bad)
    rid = engine.add_request(GOOD_PROMPTS[1], SEEDED_PAIR)
    first = engine.step()  # prefill and fork: the two samples share the last prompt block
    engine.add_request([BAD, 1, 2], SamplingParams(max_tokens=3))
    results = _drain(engine)
    # The batch after the fork copied that block (copy-on-write) and failed.
    assert batches[1].block_copies and _has_bad(batches[1])
    tokens = {c.index: list(c.token_ids) for c in first[0].outputs}
    for index, more in results[rid][0].items():
        tokens[index] += more
    assert tokens == expected


def test_a_culprit_fails_alone_and_the_others_lose_nothing(engine):
    expected = _reference(engine, GOOD_PROMPTS, SEEDED_PAIR)
    _fail_when(engine, _has_bad)
    ids = [engine.add_request(p, SEEDED_PAIR) for p in GOOD_PROMPTS]
    bad = engine.add_request([BAD, 1, 2, 3], SamplingParams(max_tokens=4))
    results = _drain(engine)
    assert [results[i][0] for i in ids] == expected
    assert results[bad][1].error == "RuntimeError: injected forward failure"
    assert [c.finish_reason for c in results[bad][1].outputs] == ["abort"]


def test_a_batch_that_fails_only_as_a_whole_fails_nobody(engine):
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    expected = _reference(engine, GOOD_PROMPTS, params)
    batches = _fail_when(engine, lambda batch: len(batch) > 1)  # e.g. out of memory
    outs = engine.generate(GOOD_PROMPTS, params)
    assert [{c.index: c.token_ids for c in o.outputs} for o in outs] == expected
    assert all(o.error is None for o in outs)
    assert [len(b) for b in batches[:3]] == [2, 1, 1]  # failed whole, then done in halves


def test_culprits_are_found_by_halving():
    calls = []

    def run(group):
        calls.append(len(group))
        if 37 in group:
            raise ValueError("bad item")
        return sum(group)

    done, culprits = run_isolating(list(range(64)), run)
    assert [item for item, _ in culprits] == [37]
    assert sorted(i for group, _ in done for i in group) == [i for i in range(64) if i != 37]
    assert len(calls) == 1 + 2 * 6  # the whole, then both halves at each of 6 levels
    assert [group for group, _ in done] == sorted(group for group, _ in done)  # in order


def test_siblings_aborted_by_a_failure_are_not_booked(engine, monkeypatch):
    apply, booked_finished = engine.step_runner.apply_forward, []

    def failing_apply(seq, num_new, prompt_logits):
        if seq.is_finished:
            booked_finished.append(seq.index)
        if seq.num_output_tokens == 2 and seq.index == 0:
            raise RuntimeError("injected booking failure")
        return apply(seq, num_new, prompt_logits)

    monkeypatch.setattr(engine.step_runner, "apply_forward", failing_apply)
    rid = engine.add_request(GOOD_PROMPTS[0], SamplingParams(n=3, max_tokens=6))
    result = _drain(engine)[rid][1]
    assert "injected booking failure" in result.error
    assert booked_finished == []


def test_withdrawing_a_refused_call_does_not_step_the_others(engine):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = _reference(engine, GOOD_PROMPTS[:1], params)[0]
    rid = engine.add_request(GOOD_PROMPTS[0], params)
    first = engine.step()
    steps = engine.stats()["steps"]
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([[1, 2, 3], [10**9]], params)  # the first is added, then withdrawn
    assert engine.stats()["steps"] == steps  # no step ran: no delta of `rid` was dropped
    tokens = {0: list(first[0].outputs[0].token_ids)}
    tokens[0] += _drain(engine)[rid][0][0]
    assert tokens == expected


def test_a_failure_after_every_sample_finished_reports_it_as_it_finished(engine):
    rid = engine.add_request(GOOD_PROMPTS[0], SamplingParams(max_tokens=1))
    engine.step_runner.run(engine.scheduler.schedule())  # the request finishes, not yet reported
    seq = engine._requests[rid].seqs[0]
    engine._fail_request(seq, RuntimeError("late bookkeeping failure"))
    (out,) = engine.step()
    assert out.finished and out.error is None
    assert out.outputs[0].finish_reason == "length" and len(out.outputs[0].token_ids) == 1


def test_score_raises_when_its_request_fails_inside(engine):
    _fail_when(engine, _has_bad)
    with pytest.raises(RuntimeError, match="1 of 2 request.*failed inside the engine"):
        engine.score([GOOD_PROMPTS[0], [BAD, 1]], [[3, 4], [5]])


def test_score_refuses_a_temperature_generation_treats_as_greedy(engine):
    with pytest.raises(ValueError, match="temperature 1e-06 is below 1e-05"):
        engine.score([1, 2, 3], [4, 5], temperature=1e-6)
    greedy = engine.score([1, 2, 3], [4, 5], temperature=0)
    assert greedy == pytest.approx(engine.score([1, 2, 3], [4, 5], temperature=1.0))


def test_eos_ids_beyond_the_vocabulary_are_ignored(checkpoints, make_engine, tmp_path):
    folder = tmp_path / "eos"
    shutil.copytree(checkpoints["qwen3"], folder)
    config = json.loads((folder / "config.json").read_text())
    eos = config["eos_token_id"]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 10**6]}))
    engine = make_engine(folder, num_blocks=64, block_size=4)
    assert engine.eos_token_ids == {eos}
    out = engine.generate([1, 2, 3], SamplingParams(min_tokens=2, max_tokens=3))[0]
    assert out.error is None and len(out.outputs[0].token_ids) >= 2
