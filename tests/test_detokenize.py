"""Incremental detokenisation: exactly the whole output's decode, for O(1) work per token."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rlserve import SamplingParams
from rlserve.config import BUNDLED_MODEL
from rlserve.engine.detokenizer import CONTEXT_TOKENS, IncrementalDetokenizer
from tests.support.checkpoints import build_tokenizer

TRICKY_TEXTS = [
    "héllo wörld 你好 🎉 <|im_end|> done",  # characters split over byte tokens, a special token
    "a . b , c ! d ? isn't it , what's that ?",  # what clean-up of spaces rewrites
    "🎉🎉🎉 你好你好<|endoftext|>",
]


def _metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style: a leading space is stripped from the first token only."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = ["the quick brown fox can't jump over the lazy dog . Hello , world !"] * 20
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def _cleanup_tokenizer() -> PreTrainedTokenizerFast:
    """The bundled tokenizer with transformers' clean-up of " ." into "." forced on."""
    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    tok.clean_up_tokenization_spaces = True
    tok.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    return tok


TOKENIZERS = {
    "bundled": lambda: AutoTokenizer.from_pretrained(BUNDLED_MODEL),
    "checkpoint": build_tokenizer,
    "metaspace": _metaspace_tokenizer,
    "cleanup": _cleanup_tokenizer,
}


def _cases(tokenizer, rng: random.Random) -> list[list[int]]:
    tricky = [tokenizer.encode(t) for t in TRICKY_TEXTS]
    pool = [i for ids in tricky for i in ids]
    vocab = len(tokenizer)
    return [
        *tricky,
        *([rng.randrange(vocab) for _ in range(rng.randint(1, 50))] for _ in range(60)),
        *([rng.choice(pool) for _ in range(rng.randint(1, 50))] for _ in range(60)),
        [pool[0]] + [0x80 + i % 60 for i in range(40)],  # a long run of incomplete bytes
    ]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_incremental_text_is_the_whole_decode_after_every_token(name, skip_special_tokens):
    tokenizer = TOKENIZERS[name]()

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    prompt = [5, 6, 7]  # the output's ids follow a prompt's in the same list
    for output in _cases(tokenizer, random.Random(0)):
        detokenizer = IncrementalDetokenizer()
        for n in range(1, len(output) + 1):
            text = detokenizer.update(prompt + output[:n], len(prompt), decode)
            assert text == decode(output[:n]), (output[:n], text)


def _decode_work_per_token(output: list[int]) -> list[int]:
    """Token ids passed to decode for each token of `output`, appended one at a time."""
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    work = [0]

    def decode(ids: list[int]) -> str:
        work[0] += len(ids)
        return tokenizer.decode(ids)

    detokenizer, per_token = IncrementalDetokenizer(), []
    for n in range(1, len(output) + 1):
        before = work[0]
        detokenizer.update(output[:n], 0, decode)
        per_token.append(work[0] - before)
    return per_token


def test_decode_work_per_token_is_bounded_not_growing():
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    text = " ".join(TRICKY_TEXTS[:2]) * 40
    output = tokenizer.encode(text)[:2000]
    per_token = _decode_work_per_token(output)
    # The window (its context, the tokens of a character not yet whole) and one slide of it.
    assert max(per_token) <= 3 * CONTEXT_TOKENS + 4
    assert sum(per_token[-500:]) <= sum(per_token[:500]) * 1.1  # the whole would be ~7x


def test_a_2000_token_output_is_detokenized_with_flat_work_per_token(make_engine):
    # The bundled model's context is 1024 tokens; its rope table is built for any length.
    engine = make_engine(max_model_len=2048, num_blocks=130)
    params = SamplingParams(max_tokens=2000, ignore_eos=True, temperature=1.0, seed=0)
    engine.add_request("What is 2 + 3?", params)
    work_at, streamed, token_ids = [0], "", []  # work_at[k]: decode work after k tokens
    while engine.has_unfinished_requests():
        for out in engine.step():
            for c in out.outputs:
                streamed += c.text
                token_ids += c.token_ids
        work_at += [engine.outputs.num_detokenized_tokens] * (len(token_ids) + 1 - len(work_at))
    assert len(token_ids) == 2000
    first, last = work_at[500] - work_at[0], work_at[2000] - work_at[1500]
    assert first <= 500 * 2 * CONTEXT_TOKENS and last <= 500 * 2 * CONTEXT_TOKENS
    assert last <= first * 1.1  # flat: a whole-output decode per token would make it ~7x
    assert streamed == engine.tokenizer.decode(token_ids, skip_special_tokens=True)
