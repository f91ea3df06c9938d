"""DraftProposer: the bundled draft checkpoint (loaded by an inner EngineCore, stepped by
draft_loop.DraftLoop over its own paged KV), greedy guesses."""

from pathlib import Path

import pytest

import rlserve
from rlserve import Engine
from rlserve._checks import ParamError
from rlserve.config import SpeculativeConfig
from rlserve.engine.draft_proposer import DraftProposer
from rlserve.engine.proposer import ProposalInput
from rlserve.sampling_params import SamplingParams

DRAFT = Path(rlserve.__file__).parent / "assets" / "draft"
TARGET_VOCAB = 653  # the bundled model's


def config(k: int = 4, **fields) -> SpeculativeConfig:
    return SpeculativeConfig(
        method="draft", num_speculative_tokens=k, draft_model=str(DRAFT), **fields
    )


def make(k: int = 4, min_run_probability: float = 0.0, **fields) -> DraftProposer:
    return DraftProposer(
        config(k, **fields),
        device="cpu",
        dtype="float32",
        target_vocab_size=TARGET_VOCAB,
        min_run_probability=min_run_probability,
    )


@pytest.fixture(scope="module")
def proposer() -> DraftProposer:
    return make()  # no early stop: always max_tokens guesses


@pytest.fixture(scope="module")
def draft_engine() -> Engine:
    return Engine(DRAFT)


def chat_ids(engine: DraftProposer | Engine, question: str) -> list[int]:
    tokenizer = engine.core.tokenizer if isinstance(engine, DraftProposer) else engine.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer.encode(text, add_special_tokens=False)


def item(ids: list[int], max_tokens: int = 4, key: tuple[str, int] = ("r", 0)) -> ProposalInput:
    return ProposalInput(key, ids, num_prompt_tokens=len(ids), max_tokens=max_tokens)


def test_proposals_equal_the_drafts_own_greedy_generate(proposer, draft_engine):
    questions = [f"What is {a} + {b}?" for a, b in [(12, 34), (56, 7), (81, 19)]]
    prompts = [chat_ids(proposer, q) for q in questions] + [[5, 6, 7, 8, 9] * 9]
    budgets = [4, 3, 1, 4]
    pairs = enumerate(zip(prompts, budgets, strict=True))
    inputs = [item(ids, m, (f"r{i}", 0)) for i, (ids, m) in pairs]

    guesses = proposer.propose(inputs)

    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in budgets]
    expected = [out.outputs[0].token_ids for out in draft_engine.generate(prompts, params)]
    assert guesses == expected
    assert [len(g) for g in guesses] == budgets


def test_guesses_are_capped_by_num_speculative_tokens():
    two = make(k=2)
    ids = chat_ids(two, "What is 40 + 2?")
    assert [len(g) for g in two.propose([item(ids, max_tokens=9)])] == [2]


def test_a_run_stops_where_the_drafts_own_confidence_drops(proposer):
    prompts = [chat_ids(proposer, f"What is {a} + {b}?") for a, b in [(12, 34), (77, 18)]]
    inputs = [item(ids, 16, (str(i), 0)) for i, ids in enumerate(prompts)]
    full = make(k=16).propose(inputs)  # past the answer and its <|im_end|>
    default = DraftProposer(config(16), device="cpu", dtype="float32", target_vocab_size=653)
    cut = default.propose(inputs)  # stops below probability 0.5 for the whole run
    for short, whole in zip(cut, full, strict=True):
        assert 1 <= len(short) <= len(whole) and whole[: len(short)] == short
    assert sum(map(len, cut)) < sum(map(len, full))
    certain = make(k=16, min_run_probability=1.0).propose(inputs)
    assert [len(g) for g in certain] == [1, 1]  # no token has probability exactly 1


def test_second_call_computes_only_the_new_tokens(proposer):
    proposer.reset()
    ids = chat_ids(proposer, "Please compute 23 + 45.")
    before = proposer.stats()["draft_catch_up_tokens"]
    first = proposer.propose([item(ids)])[0]
    assert proposer.stats()["draft_catch_up_tokens"] - before == len(ids)

    before = proposer.stats()["draft_catch_up_tokens"]
    longer = ids + first[:2] + [7]  # the target accepted two guesses, then sampled 7
    second = proposer.propose([item(longer)])[0]
    assert proposer.stats()["draft_catch_up_tokens"] - before == 1  # just the 7
    assert second == proposer.propose([item(longer, key=("fresh", 0))])[0]

    before = proposer.stats()["draft_catch_up_tokens"]
    accepted_all = longer + second + [9]  # all four accepted: the last had no KV yet
    proposer.propose([item(accepted_all)])
    assert proposer.stats()["draft_catch_up_tokens"] - before == 2


def test_a_new_sequence_reuses_the_prefix_cache(proposer):
    proposer.reset()
    ids = chat_ids(proposer, "Please compute 23 + 45.")
    first = proposer.propose([item(ids)])[0]
    hits_before = proposer.stats()["prefix_cache_hit_tokens"]

    second = proposer.propose([item(ids + first[:2], key=("other", 0))])[0]

    block = proposer.core.block_manager.block_size
    hits = proposer.stats()["prefix_cache_hit_tokens"] - hits_before
    assert hits >= (len(ids) // block) * block > 0
    assert second[:2] == first[2:4]  # greedy: the same continuation, shifted


def test_a_rejected_guess_is_rolled_back(proposer):
    ids = chat_ids(proposer, "What is 61 + 17?")
    first = proposer.propose([item(ids, key=("roll", 0))])[0]
    wrong = (first[0] + 1) % TARGET_VOCAB  # the target rejected the first guess
    again = proposer.propose([item(ids + [wrong], key=("roll", 0))])[0]
    assert again == proposer.propose([item(ids + [wrong], key=("clean", 0))])[0]


def test_release_frees_and_reset_drops_the_cache(proposer):
    proposer.reset()
    assert proposer.stats()["kv_blocks_used"] == 0
    ids = chat_ids(proposer, "Please compute 9 * 8, then 3 + 4.")  # a full block or more
    proposer.propose([item(ids, key=("a", 0)), item(ids + [20], key=("a", 1))])
    stats = proposer.stats()
    assert stats["kv_blocks_used"] > 0 and stats["num_sequences"] == 2
    proposer.release(("a", 0))
    proposer.release(("a", 1))
    proposer.release(("never-seen", 3))  # unknown keys are fine
    assert proposer.stats()["kv_blocks_used"] == 0
    assert proposer.stats()["num_sequences"] == 0

    hits_before = proposer.stats()["prefix_cache_hit_tokens"]
    proposer.propose([item(ids, key=("b", 0))])
    assert proposer.stats()["prefix_cache_hit_tokens"] > hits_before  # freed, still cached
    proposer.reset()
    assert proposer.stats()["kv_blocks_used"] == 0
    hits_before = proposer.stats()["prefix_cache_hit_tokens"]
    proposer.propose([item(ids, key=("c", 0))])
    assert proposer.stats()["prefix_cache_hit_tokens"] == hits_before


def test_a_sequence_the_draft_cannot_hold_gets_no_guesses(proposer):
    proposer.reset()
    too_long = [7] * proposer.core.max_model_len
    ids = chat_ids(proposer, "What is 1 + 1?")
    guesses = proposer.propose([item(too_long, key=("long", 0)), item(ids, key=("ok", 0))])
    assert guesses[0] == [] and len(guesses[1]) == 4
    assert list(proposer.loop.seqs) == [("ok", 0)]
    proposer.release(("ok", 0))
    assert proposer.stats()["kv_blocks_used"] == 0


def test_small_kv_budget_is_respected():
    small = make(draft_num_blocks=6)
    assert small.stats()["kv_blocks_total"] == 6
    ids = chat_ids(small, "What is 3 + 4?")
    # 2 blocks each, no shared prefix: four do not fit at once, they run in rounds.
    inputs = [item([20 + i, *ids], key=(str(i), 0)) for i in range(4)]
    guesses = small.propose(inputs)
    assert [len(g) for g in guesses] == [4, 4, 4, 4]
    assert small.stats()["kv_blocks_used"] <= 6
    assert guesses == make().propose(inputs)  # the same guesses as with room for all


def test_vocab_size_mismatch_is_refused():
    bad = config()
    with pytest.raises(ParamError, match="vocab size") as error:
        DraftProposer(bad, device="cpu", dtype="float32", target_vocab_size=TARGET_VOCAB + 1)
    assert error.value.field == "draft_model"


def test_tokenizer_mismatch_is_refused(checkpoints, draft_engine):
    other = SpeculativeConfig(method="draft", draft_model=str(checkpoints["qwen3"]))
    random_vocab = Engine(checkpoints["qwen3"], num_blocks=8).model.config.vocab_size
    with pytest.raises(ParamError, match="tokenizer") as error:
        DraftProposer(
            other,
            device="cpu",
            dtype="float32",
            target_vocab_size=random_vocab,
            target_tokenizer=draft_engine.tokenizer,
        )
    assert error.value.field == "draft_model"


def test_the_same_tokenizer_is_accepted():
    made = DraftProposer(
        config(),
        device="cpu",
        dtype="float32",
        target_vocab_size=TARGET_VOCAB,
        target_tokenizer=Engine().tokenizer,  # the bundled target's
    )
    assert made.vocab_size == TARGET_VOCAB


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ("not a list", "inputs"),
        (["not an input"], "inputs"),
        ([item([1, 2], max_tokens=0)], "max_tokens"),
        ([item([1, 2], max_tokens=True)], "max_tokens"),
        ([item([])], "token_ids"),
        ([item([1, TARGET_VOCAB])], "token_ids"),
        ([item([1, -1])], "token_ids"),
        ([item([1, True])], "token_ids"),
        ([item([1, 2.0])], "token_ids"),
        ([item((1, 2))], "token_ids"),
        ([item([1, 2]), item([3, 4])], "key"),
    ],
)
def test_bad_inputs_are_refused_by_field_and_leave_nothing_behind(proposer, bad, field):
    before = proposer.stats()
    with pytest.raises(ParamError) as error:
        proposer.propose(bad)
    assert error.value.field == field
    assert proposer.stats() == before


def test_bad_config_is_refused_by_field():
    class NoDraft:
        draft_model = None
        num_speculative_tokens = 4

    with pytest.raises(ParamError) as error:
        DraftProposer(NoDraft(), device="cpu", dtype="float32", target_vocab_size=653)
    assert error.value.field == "draft_model"
    with pytest.raises(ParamError) as error:
        DraftProposer(config(), device="cpu", dtype="float32", target_vocab_size="653")
    assert error.value.field == "target_vocab_size"
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ParamError) as error:
            make(min_run_probability=bad)
        assert error.value.field == "min_run_probability"


def test_fastest_linears_keep_the_drafts_outputs(monkeypatch):
    import torch.nn.functional as F

    from rlserve.engine import draft_fast
    from rlserve.models.linear import Linear

    engine = Engine(DRAFT)  # its own model instance: the forwards are swapped on it
    prompts = [chat_ids(engine, f"What is {a} + {b}?") for a, b in [(12, 34), (56, 7)]]
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0)
    before = engine.generate(prompts, params)
    # The timing is faked (F.linear always "faster") so that every swap is exercised.
    monkeypatch.setattr(
        draft_fast, "_seconds", lambda m, f: 0.0 if f is draft_fast._plain_forward else 1.0
    )
    monkeypatch.setattr(draft_fast, "_head_seconds", lambda w, mm: 0.0 if mm is F.linear else 1.0)
    switched = draft_fast.use_fastest_linears(engine.model)
    assert switched == 1 + sum(isinstance(m, Linear) for m in engine.model.modules())
    after = engine.generate(prompts, params)
    for a, b in zip(before, after, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].logprobs == pytest.approx(b.outputs[0].logprobs, abs=1e-4)


def propose_twice(proposer: DraftProposer, prompts: list[list[int]]) -> list[list[int]]:
    """Guesses for each prompt, then again once the first guess is confirmed (a decode
    on the KV of the first call)."""
    first = [proposer.propose([item(ids, key=("n", i))])[0] for i, ids in enumerate(prompts)]
    again = [
        proposer.propose([item(ids + guess[:1], key=("n", i))])[0]
        for i, (ids, guess) in enumerate(zip(prompts, first, strict=True))
    ]
    return first + again


def test_native_decode_steps_give_the_module_paths_guesses(proposer):
    prompts = [chat_ids(proposer, f"What is {a} + {b}?") for a, b in [(23, 45), (67, 8)]]
    loop, step = proposer.loop, proposer.loop.decode_step
    assert step is not None  # the bundled draft runs its one-token forwards natively
    loop.reset()
    before = loop.counters["draft_native_forwards"]
    native = propose_twice(proposer, prompts)
    assert loop.counters["draft_native_forwards"] > before
    loop.reset()
    loop.decode_step = None
    try:
        module = propose_twice(proposer, prompts)
    finally:
        loop.decode_step = step
        proposer.reset()
    assert native == module
