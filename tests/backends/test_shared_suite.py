"""The shared backend suite: the same assertions for every backend (native, huggingface,
remote over a real rlserve server, tinker over a stand-in; see conftest.py).

Where a backend cannot do something at all, UNSUPPORTED says so, and the suite asserts
that it raises BackendUnsupported naming itself: no backend may silently skip a check.
Every backend is compared with the Hugging Face reference in fp32: greedy tokens exactly,
logprobs to TOLERANCE (measured on the bundled model, 320 greedy tokens: native vs HF
generate logprobs differ by at most 8.3e-6, HF score vs native generate by 3.6e-5).
"""

from __future__ import annotations

import pytest
import torch

from rlserve import SamplingParams
from rlserve.backends import (
    UNKNOWN_VERSION,
    BackendUnsupported,
    complete,
    prompt_token_ids,
)
from rlserve.config import BUNDLED_MODEL
from rlserve.models.loader import read_safetensors

TOLERANCE = 1e-4  # |logprob| difference allowed against the reference, every backend (fp32)
UNSUPPORTED = {
    "native": set(),
    "huggingface": set(),
    "remote": {"logits"},
    "tinker": {"logits", "update_weights", "load_adapter", "score_at_temperature"},
}
TEXT = "1+1="
IDS = [5, 17, 42, 99]
MESSAGES = [{"role": "user", "content": "What is 2+3?"}]
PROMPTS = [TEXT, IDS, MESSAGES]
GREEDY = SamplingParams(temperature=0, max_tokens=12)
SAMPLED = SamplingParams(temperature=0.7, max_tokens=12, seed=11)


def supports(backend, operation: str) -> bool:
    return operation not in UNSUPPORTED[backend.name]


def says_unsupported(backend, action) -> None:
    """`action()` raises BackendUnsupported naming `backend`."""
    with pytest.raises(BackendUnsupported, match=f"the {backend.name} backend cannot") as info:
        action()
    assert info.value.backend == backend.name


def greedy(backend, prompts=PROMPTS):
    return [group[0] for group in complete(backend, prompts, GREEDY)]


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def assert_version(completion, backend) -> None:
    version = backend.policy_version
    assert completion.weight_versions == [version] * len(completion.token_ids) or all(
        v == UNKNOWN_VERSION for v in completion.weight_versions
    )


# ---- generate -------------------------------------------------------------------------------


def test_generate_from_text_ids_and_messages(backend):
    outs = greedy(backend)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.error is None
        assert out.prompt_token_ids == prompt_token_ids(backend.tokenizer, prompt)
        assert out.token_ids and all(isinstance(t, int) for t in out.token_ids)
        assert out.text == backend.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        assert len(out.logprobs) == len(out.token_ids) and all(lp <= 0 for lp in out.logprobs)
        assert len(out.weight_versions) == len(out.token_ids)
        assert_version(out, backend)
        assert out.finish_reason in ("stop", "length")
    assert outs[0].prompt_token_ids == backend.tokenizer.encode(TEXT)
    assert outs[2].finish_reason == "stop"  # the chat answer ends with its EOS
    assert outs[1].finish_reason == "length" and len(outs[1].token_ids) == GREEDY.max_tokens


def test_greedy_matches_the_huggingface_reference(backend, reference):
    for out, ref in zip(greedy(backend), greedy(reference), strict=True):
        assert out.token_ids == ref.token_ids
        assert max_diff(out.logprobs, ref.logprobs) <= TOLERANCE


def test_seeded_sampling_is_reproducible_and_n_expands(backend):
    params = SamplingParams(temperature=1.0, max_tokens=8, seed=5, n=3)
    first, again = complete(backend, [MESSAGES], params), complete(backend, [MESSAGES], params)
    assert len(first) == 1 and len(first[0]) == 3
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in again[0]]


def test_stop_token_ids_and_stop_strings(backend):
    space = backend.tokenizer.encode(" ", add_special_tokens=False)[-1]
    by_id = complete(backend, [MESSAGES], SamplingParams(temperature=0, stop_token_ids=[space]))
    by_text = complete(backend, [MESSAGES], SamplingParams(temperature=0, stop=[" ="]))
    by_id, by_text = by_id[0][0], by_text[0][0]
    assert (by_id.finish_reason, by_id.stop_reason) == ("stop", space)
    assert by_id.token_ids[-1] == space
    assert by_text.finish_reason == "stop" and by_text.stop_reason == " ="


# ---- score and logits -----------------------------------------------------------------------


def test_score_equals_what_generate_reported(backend):
    for out in greedy(backend):
        (score,) = backend.score([(out.prompt_token_ids, out.token_ids)])
        assert max_diff(score, out.logprobs) <= TOLERANCE
    (sampled,) = complete(backend, [MESSAGES], SAMPLED)[0]
    pair = [(sampled.prompt_token_ids, sampled.token_ids)]
    if not supports(backend, "score_at_temperature"):
        says_unsupported(backend, lambda: backend.score(pair, temperature=0.7))
        return
    (score,) = backend.score(pair, temperature=0.7)
    assert max_diff(score, sampled.logprobs) <= TOLERANCE


def test_score_of_several_pairs_keeps_their_order(backend, reference):
    pairs = [(IDS, [20, 21, 22]), (backend.tokenizer.encode(TEXT), [20]), ([7, 8], [9, 10])]
    scores, expected = backend.score(pairs), reference.score(pairs)
    assert [len(s) for s in scores] == [3, 1, 2]
    for got, want in zip(scores, expected, strict=True):
        assert max_diff(got, want) <= TOLERANCE


def test_logits_rows_give_the_scores(backend):
    pairs = [(IDS, [20, 21, 22]), ([7, 8], [9])]
    if not supports(backend, "logits"):
        says_unsupported(backend, lambda: backend.logits(pairs))
        return
    rows = backend.logits(pairs)
    vocab = len(backend.tokenizer)
    for (_, response), logits, score in zip(pairs, rows, backend.score(pairs), strict=True):
        assert logits.dtype == torch.float32 and logits.shape[0] == len(response)
        assert logits.shape[1] >= vocab - 8  # the model's vocabulary, padding aside
        chosen = torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0]
        assert max_diff(chosen.tolist(), score) <= TOLERANCE


# ---- bad input: a clear error, nothing lost -------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([], "prompts"),
        ("1+1=", "prompts"),
        ([""], "prompts"),
        ([[]], "prompts"),
        ([2.5], "prompts"),
    ],
)
def test_bad_prompts_are_refused(backend, prompts, message):
    with pytest.raises(ValueError, match=message):
        complete(backend, prompts, GREEDY)


@pytest.mark.parametrize(
    "pairs", [[], [("1+1=", [5])], [(IDS, "2")], [(IDS, [])], [([], [5])], [(IDS,)]]
)
def test_bad_score_pairs_are_refused(backend, pairs):
    with pytest.raises(ValueError, match="pairs|token ids"):
        backend.score(pairs)


def test_a_bad_request_fails_alone(backend):
    alone = greedy(backend, [IDS])[0]
    bad, good = greedy(backend, [[len(backend.tokenizer) + 1000], IDS])
    assert bad.error and bad.finish_reason == "error" and not bad.token_ids
    assert good.error is None and good.token_ids == alone.token_ids


def test_a_bad_weight_update_changes_nothing(backend):
    before, version = greedy(backend, [IDS])[0], backend.policy_version
    shape = dict(read_safetensors(BUNDLED_MODEL / "model.safetensors"))["model.norm.weight"].shape
    update = {"model.no_such.weight": torch.zeros(shape)}
    if not supports(backend, "update_weights"):
        says_unsupported(backend, lambda: backend.update_weights(update))
        return
    with pytest.raises(Exception, match="no_such"):
        backend.update_weights(update)
    assert backend.policy_version == version
    after = greedy(backend, [IDS])[0]
    assert after.token_ids == before.token_ids and after.logprobs == before.logprobs
