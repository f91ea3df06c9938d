"""The cost-aware auto-off: speculation runs only in batch-size buckets where it costs
fewer seconds per appended token than plain decoding. Timings are fed by hand or by a
fake clock (no real clock: deterministic), and outputs never depend on the decision."""

from __future__ import annotations

import pytest

from rlserve import Engine
from rlserve.engine.ngram_proposer import NgramProposer
from rlserve.engine.sequence import Sequence
from rlserve.engine.spec_rows import MeasuredCosts, StepTimer, bucket_of
from rlserve.sampling_params import SamplingParams

from .test_speculative import NGRAM, assert_same, repetitive_prompts, speculation_off


def test_buckets_are_powers_of_two_up_to_16():
    assert [bucket_of(n) for n in (1, 2, 3, 4, 7, 8, 15, 16, 200)] == [0, 1, 1, 2, 2, 3, 3, 4, 4]


def feed(costs: MeasuredCosts, num: int, on: float, off: float, steps: int) -> list[bool]:
    """`steps` decisions at batch size `num`, each step then timed at `on` or `off`
    seconds per token; returns the decisions."""
    decisions = []
    for _ in range(steps):
        speculate = costs.pays(num)
        decisions.append(speculate)
        costs.record(num, speculate, on if speculate else off, 1)
    return decisions


def test_probes_both_modes_then_keeps_the_cheaper_and_reprobes():
    costs = MeasuredCosts(probe_steps=2, reprobe_every=10)
    decisions = feed(costs, 1, on=1.0, off=2.0, steps=24)
    assert decisions[:4] == [True, True, False, False]  # probes: on first, then off
    # decisions 1..20: the cheaper (on), but 9, 10, 19 and 20 re-probe plain decoding
    assert decisions[4:] == [True] * 8 + [False] * 2 + [True] * 8 + [False] * 2


def test_a_bucket_where_speculation_is_slower_turns_it_off_alone():
    costs = MeasuredCosts(probe_steps=2, reprobe_every=10)
    slow = feed(costs, 16, on=3.0, off=1.0, steps=14)
    assert slow[:4] == [True, True, False, False]
    assert slow[4:] == [False] * 8 + [True] * 2  # only the re-probes speculate
    assert feed(costs, 1, on=1.0, off=3.0, steps=6)[4:] == [True, True]  # its own bucket


def test_costs_follow_drift_and_clip_stalls():
    costs = MeasuredCosts(probe_steps=1, reprobe_every=4)
    feed(costs, 2, on=1.0, off=2.0, steps=2)
    for _ in range(8):
        costs.record(2, True, 1.0, 1)
    costs.record(2, True, 1000.0, 1)  # a stall (a paused caller): clipped
    assert costs.cost(1, True) < 2.0
    assert costs.pays(2)
    for _ in range(20):  # speculation got slower for good: the estimate follows
        costs.record(2, True, 4.0, 1)
    assert not costs.pays(2)
    with pytest.raises(ValueError, match="probe_steps"):
        MeasuredCosts(probe_steps=4, reprobe_every=4)


def test_cost_is_seconds_over_tokens_not_a_mean_of_step_ratios():
    # Verify steps of 5 ms keeping 5 tokens or 1 (alternating): 10 ms for 6 tokens, 1.67
    # ms per token; a mean of the step ratios would say 3 ms and lose to plain's 2 ms.
    costs = MeasuredCosts(probe_steps=2, reprobe_every=1000)
    for tokens in (5, 1) * 10:
        costs.record(1, True, 0.005, tokens)
    for _ in range(4):
        costs.record(1, False, 0.002, 1)
    assert costs.cost(0, True) == pytest.approx(0.005 / 3, rel=0.15)
    assert costs.cost(0, False) == pytest.approx(0.002)
    assert costs.pays(1)
    assert costs.cost(3, True) is None


def seq(tokens: int) -> Sequence:
    return Sequence("r", 0, list(range(tokens)), SamplingParams(), seed=0)


def test_step_timer_measures_pure_decode_steps_per_token():
    now = [0.0]
    timer = StepTimer(lambda: now[0])
    a, b = seq(5), seq(7)
    assert timer.finish([a, b]) is None  # nothing timed before
    timer.begin([a, b], speculated=True)
    a.token_ids += [1, 2, 3]  # 3 + 1 tokens appended in 2 s
    b.token_ids += [4]
    now[0] = 2.0
    assert timer.finish([a, b]) == (2, True, 2.0, 4)
    timer.begin([a], speculated=False)
    now[0] = 5.0
    assert timer.finish([a]) is None  # it appended nothing: not a sample
    timer.begin([a], speculated=False)
    a.token_ids += [9]
    assert timer.finish([a, seq(3)]) is None  # a new sequence: maybe after idle time


class Counting(NgramProposer):
    def __init__(self) -> None:
        super().__init__(1, 4)
        self.calls = 0

    def propose(self, inputs):
        self.calls += 1
        return super().propose(inputs)


def engine_with_clock(make_engine, seconds_per_step: dict[bool, float]) -> tuple[Engine, Counting]:
    """An n-gram engine whose clock says a step costs `seconds_per_step[speculated]`."""
    engine = make_engine(speculative=NGRAM)
    spec = engine.step_runner.speculator
    counting = Counting()
    spec.proposer = counting
    spec.costs = MeasuredCosts(probe_steps=2, reprobe_every=1000)
    state = {"now": 0.0, "calls": 0}

    def clock() -> float:
        speculated = counting.calls > state["calls"]
        state["now"] += seconds_per_step[speculated]
        state["calls"] = counting.calls
        return state["now"]

    spec.timer = StepTimer(clock)
    return engine, counting


@pytest.mark.parametrize(("cost_on", "speculates"), [(100.0, False), (1.0, True)])
def test_engine_speculates_only_where_it_measured_a_gain(make_engine, cost_on, speculates):
    engine, counting = engine_with_clock(make_engine, {True: cost_on, False: 1.0})
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    prompt = repetitive_prompts(1)[0]
    on = engine.generate([prompt], params)
    # Probes: 2 speculating steps (measured from the second on), 2 plain ones.
    assert counting.calls >= 2
    assert (counting.calls <= 3) is not speculates
    with speculation_off(engine):
        off = engine.generate([prompt], params)
    assert_same(on, off)
