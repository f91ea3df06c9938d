"""Sampling semantics: seeds, n, stop strings / ids, min/max tokens, ignore_eos (as vLLM)."""

from rlserve import SamplingParams

PROMPT = [5, 17, 42, 99, 3, 250, 7]


def test_seeded_sampling_is_reproducible_and_n_samples_differ(qwen3):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=11, ignore_eos=True)
    first = qwen3.generate(PROMPT, params)[0]
    second = qwen3.generate(PROMPT, params)[0]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in second.outputs]
    assert [c.logprobs for c in first.outputs] == [c.logprobs for c in second.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) == 4
    assert [c.index for c in first.outputs] == [0, 1, 2, 3]
    other = qwen3.generate(
        PROMPT, SamplingParams(n=1, temperature=1.0, max_tokens=16, seed=12, ignore_eos=True)
    )[0]
    assert other.outputs[0].token_ids != first.outputs[0].token_ids


def test_unseeded_requests_differ(qwen3):
    params = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    a, b = qwen3.generate([PROMPT, PROMPT], params)
    assert a.outputs[0].token_ids != b.outputs[0].token_ids


def _greedy(engine, **kw):
    return engine.generate(PROMPT, SamplingParams(temperature=0, **kw))[0].outputs[0]


def test_max_tokens_and_ignore_eos(qwen3):
    c = _greedy(qwen3, max_tokens=5, ignore_eos=True)
    assert len(c.token_ids) == 5 and c.finish_reason == "length"


def test_stop_token_ids_stop_and_are_kept_in_token_ids(qwen3):
    reference = _greedy(qwen3, max_tokens=12, ignore_eos=True).token_ids
    stop_id = reference[6]
    c = _greedy(qwen3, max_tokens=12, stop_token_ids=[stop_id], ignore_eos=True)
    first = reference.index(stop_id)
    assert c.token_ids == reference[: first + 1]
    assert c.finish_reason == "stop" and c.stop_reason == stop_id


def test_min_tokens_bans_stop_ids_until_reached(qwen3):
    reference = _greedy(qwen3, max_tokens=12, ignore_eos=True).token_ids
    stop_id = reference[0]
    c = _greedy(qwen3, max_tokens=12, min_tokens=4, stop_token_ids=[stop_id], ignore_eos=True)
    assert stop_id not in c.token_ids[:4]
    assert len(c.token_ids) >= 4


def test_eos_stops_unless_ignored(qwen3):
    eos = qwen3.tokenizer.eos_token_id
    reference = _greedy(qwen3, max_tokens=12, ignore_eos=True)
    # Make EOS the token greedy picks at step 3 by treating that token as EOS.
    qwen3.outputs.eos_token_ids = {reference.token_ids[3]}
    try:
        c = _greedy(qwen3, max_tokens=12)
        assert c.finish_reason == "stop" and c.stop_reason is None
        assert (
            c.token_ids
            == reference.token_ids[: reference.token_ids.index(reference.token_ids[3]) + 1]
        )
        ignored = _greedy(qwen3, max_tokens=12, ignore_eos=True)
        assert ignored.token_ids == reference.token_ids
    finally:
        qwen3.outputs.eos_token_ids = {eos}


def test_stop_strings_cut_text_and_keep_tokens(qwen3):
    reference = _greedy(qwen3, max_tokens=16, ignore_eos=True)
    text = reference.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"need a visible stop string in {text!r}"
    c = _greedy(qwen3, max_tokens=16, ignore_eos=True, stop=[stop])
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.text == text[: text.index(stop)]
    assert reference.token_ids[: len(c.token_ids)] == c.token_ids
    kept = _greedy(
        qwen3, max_tokens=16, ignore_eos=True, stop=[stop], include_stop_str_in_output=True
    )
    assert kept.text == text[: text.index(stop) + len(stop)]


def test_streamed_text_deltas_add_up(qwen3):
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    request_id = qwen3.add_request(PROMPT, params)
    text, tokens, deltas = "", [], 0
    while qwen3.has_unfinished_requests():
        for delta in qwen3.step():
            assert delta.request_id == request_id
            deltas += 1
            text += delta.outputs[0].text
            tokens += delta.outputs[0].token_ids
    final = _greedy(qwen3, max_tokens=16, ignore_eos=True)
    assert deltas >= 16 and tokens == final.token_ids and text == final.text
