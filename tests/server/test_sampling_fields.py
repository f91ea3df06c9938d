"""The sampling fields vLLM clients send, over HTTP: logit_bias, allowed_token_ids,
bad_words, presence/frequency/repetition penalties (greedy tokens checked against the
bundled model's raw logits with vLLM's rule applied by hand), truncate_prompt_tokens,
`logprobs: -1` under `--max-logprobs`, and a 400 naming the field for every bad value."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch

from rlserve.engine import penalties
from rlserve.server import ServerConfig
from rlserve.server.errors import APIError
from rlserve.server.sampling import check_logprob_limits
from tests.support.servers import TEST_MODEL, RunningServer

PROMPT = "What is 12 + 7?"
STEPS = 12


@pytest.fixture(scope="module")
def server(make_engine) -> Iterator[RunningServer]:
    """`--max-logprobs -1`: a request may ask for the whole vocabulary."""
    engine = make_engine(TEST_MODEL, max_num_seqs=8)
    running = RunningServer(engine, ServerConfig(max_logprobs=-1, flush_interval_ms=1.0))
    yield running
    running.close()


def _generate(server: RunningServer, **fields) -> dict:
    body = {"prompt": PROMPT, "max_tokens": STEPS, "temperature": 0.0, "ignore_eos": True}
    resp = httpx.post(server.url + "/generate", json={**body, **fields}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _greedy_by_hand(engine, prompt_ids: list[int], steps: int, adjust) -> list[int]:
    """Greedy decoding from the model's raw logits with `adjust(logits, output)` applied."""
    output: list[int] = []
    for _ in range(steps):
        logits = engine.logits(prompt_ids + output)[-1]
        output.append(int(adjust(logits.clone(), output).argmax()))
    return output


def _vllm_penalties(presence=0.0, frequency=0.0, repetition=1.0, prompt=()):
    def adjust(logits: torch.Tensor, output: list[int]) -> torch.Tensor:
        for token in set(prompt) | set(output):
            value = logits[token]
            logits[token] = value / repetition if value > 0 else value * repetition
        for token, count in Counter(output).items():
            logits[token] -= frequency * count + presence
        return logits

    return adjust


@pytest.mark.parametrize(
    "fields",
    [
        {"frequency_penalty": 1.5},
        {"presence_penalty": 2.0},
        {"repetition_penalty": 1.8},
        {"repetition_penalty": 0.7, "frequency_penalty": -0.5},
    ],
)
def test_penalised_greedy_tokens_match_vllms_rule_on_the_raw_logits(server, bundled, fields):
    plain = _generate(server)
    got = _generate(server, **fields)
    prompt_ids = got["prompt_ids"]
    adjust = _vllm_penalties(
        fields.get("presence_penalty", 0.0),
        fields.get("frequency_penalty", 0.0),
        fields.get("repetition_penalty", 1.0),
        prompt_ids,
    )
    assert got["completion_ids"] == _greedy_by_hand(bundled, prompt_ids, STEPS, adjust)
    assert got["completion_ids"] != plain["completion_ids"]
    # logprobs are the model's own: the same as scoring the penalised tokens unpenalised
    logits = bundled.logits(prompt_ids + got["completion_ids"])[len(prompt_ids) - 1 : -1]
    raw = logits.log_softmax(-1).gather(1, torch.tensor(got["completion_ids"])[:, None])
    assert got["logprobs"] == pytest.approx(raw.squeeze(1).tolist(), abs=1e-4)
    assert got["sampling_logprobs"] != pytest.approx(got["logprobs"], abs=1e-4)


def test_logit_bias_and_allowed_token_ids_over_the_openai_sdk(oai, model, server):
    plain = _generate(server, logprobs=3)
    second = plain["top_logprobs"][0][1][0]  # the second most likely first token
    first = plain["completion_ids"][0]
    biased = _generate(server, logit_bias={str(second): 100.0}, logprobs=3)
    assert set(biased["completion_ids"]) == {second}
    assert biased["logprobs"][0] == pytest.approx(plain["top_logprobs"][0][1][1], abs=1e-5)
    assert biased["sampling_logprobs"][0] == pytest.approx(0.0, abs=1e-4)
    banned = _generate(server, logit_bias={str(first): -100})
    assert banned["completion_ids"][0] != first
    reply = oai.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=STEPS,
        temperature=0.0,
        logit_bias={str(second): 100},
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    assert set(reply.choices[0].token_ids) == {second}
    allowed = _generate(server, allowed_token_ids=[first, second], temperature=1.0, seed=3)
    assert set(allowed["completion_ids"]) <= {first, second}


def test_bad_words_never_appear_whole(server, bundled):
    plain = _generate(server)
    text = plain["text"]
    word = next(w for w in text.split() if w.strip())
    got = _generate(server, bad_words=[word])
    for ids in penalties.bad_words_token_ids([word], bundled.tokenizer):
        out = got["completion_ids"]
        assert all(out[i : i + len(ids)] != ids for i in range(len(out)))
    assert got["completion_ids"] != plain["completion_ids"]


def test_seeded_penalised_sampling_is_reproducible(server):
    fields = {"temperature": 1.0, "seed": 7, "n": 2, "repetition_penalty": 1.3}
    fields |= {"presence_penalty": 0.4, "logit_bias": {"5": 2.0}}
    first, second = _generate(server, **fields), _generate(server, **fields)
    assert first["results"] == second["results"]
    assert first["results"][0]["completion_ids"] != first["results"][1]["completion_ids"]


def test_truncate_prompt_tokens_keeps_the_last_tokens(server):
    whole = _generate(server, max_tokens=2)["prompt_ids"]
    cut = _generate(server, max_tokens=2, truncate_prompt_tokens=3)
    assert cut["prompt_ids"] == whole[-3:]


def test_whole_vocabulary_logprobs(oai, model, server, bundled):
    vocab = bundled.model.config.vocab_size
    reply = oai.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=2,
        temperature=0.0,
        logprobs=-1,
        extra_body={"return_tokens_as_token_ids": True},  # distinct keys for same-text tokens
    )
    assert all(len(top) == vocab for top in reply.choices[0].logprobs.top_logprobs)
    reply = oai.completions.create(
        model=model, prompt="1 + 1", max_tokens=1, extra_body={"prompt_logprobs": -1}
    )
    entries = reply.choices[0].model_extra["prompt_logprobs"]
    assert entries[0] is None and all(len(e) >= vocab for e in entries[1:])


def test_logprobs_above_max_logprobs_get_vllms_message(oai, model, main_server_url):
    client = openai.OpenAI(base_url=main_server_url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=model, prompt="x", max_tokens=1, logprobs=-1)
    assert "Requested sample logprobs of" in err.value.message
    assert "greater than max allowed: 20" in err.value.message
    assert err.value.body["param"] == "logprobs"


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_whole_vocabulary_over_the_limit_names_the_vocabulary_size(field, bundled, main_server_url):
    """vLLM (`v1/engine/processor.py` `_validate_logprobs`) resolves -1 to the vocabulary
    size before comparing and names that number."""
    body = {"prompt": "x", "max_tokens": 1, field: -1}
    resp = httpx.post(main_server_url + "/v1/completions", json=body, timeout=30)
    kind = "sample" if field == "logprobs" else "prompt"
    vocab = bundled.model.config.vocab_size
    message = f"Requested {kind} logprobs of {vocab}, which is greater than max allowed: 20"
    assert resp.status_code == 400 and resp.json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("logprobs", "prompt_logprobs", "max_logprobs", "message"),
    [
        (-1, None, 20, "Requested sample logprobs of 1000, which is greater than max allowed: 20"),
        (None, -1, 5, "Requested prompt logprobs of 1000, which is greater than max allowed: 5"),
        (21, None, 20, "Requested sample logprobs of 21, which is greater than max allowed: 20"),
        (
            1001,
            None,
            -1,
            "Requested sample logprobs of 1001, which is greater than max allowed: 1000",
        ),
    ],
)
def test_logprob_limit_messages_name_the_number_requested(
    logprobs, prompt_logprobs, max_logprobs, message
):
    with pytest.raises(APIError) as err:
        check_logprob_limits(logprobs, prompt_logprobs, max_logprobs, vocab_size=1000)
    assert err.value.message == message
    assert err.value.param == ("logprobs" if logprobs is not None else "prompt_logprobs")


def test_logprob_limits_pass_within_the_vocabulary():
    check_logprob_limits(-1, -1, -1, vocab_size=1000)
    check_logprob_limits(1000, 20, 1000, vocab_size=1000)
    check_logprob_limits(-1, None, -1)  # an unlimited server without a vocabulary size


@pytest.fixture
def main_server_url(make_engine, pytestconfig) -> str:
    from tests.support.servers import main_server

    return main_server(make_engine, pytestconfig).url


BAD = [
    ({"presence_penalty": 2.5}, "presence_penalty", "must be in [-2, 2]"),
    ({"frequency_penalty": -3}, "frequency_penalty", "must be in [-2, 2]"),
    ({"repetition_penalty": 0}, "repetition_penalty", "greater than zero"),
    ({"repetition_penalty": "high"}, "repetition_penalty", ""),
    ({"logit_bias": {"x": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"5": "y"}}, "logit_bias", ""),
    ({"logit_bias": {"-1": 5}}, "logit_bias", ">= 0"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias", "out-of-vocab"),
    ({"allowed_token_ids": []}, "allowed_token_ids", "empty"),
    ({"allowed_token_ids": [10**9]}, "allowed_token_ids", "out-of-vocab"),
    ({"allowed_token_ids": "5"}, "allowed_token_ids", ""),
    ({"bad_words": "word"}, "bad_words", ""),
    ({"bad_words": [" "]}, "bad_words", "non-empty"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens", ">= 1 or -1"),
    ({"truncate_prompt_tokens": 10**6}, "truncate_prompt_tokens", "max_model_len"),
    ({"logprobs": -2}, "logprobs", "non-negative or -1"),
    ({"prompt_logprobs": -3}, "prompt_logprobs", "non-negative or -1"),
    ({"use_beam_search": True}, "use_beam_search", "not supported"),
]


@pytest.mark.parametrize(("fields", "param", "needle"), BAD)
@pytest.mark.parametrize("path", ["/v1/completions", "/generate"])
def test_bad_values_are_400s_naming_the_field(server, path, fields, param, needle):
    body = {"prompt": PROMPT, "max_tokens": 2, **fields}
    resp = httpx.post(server.url + path, json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and needle in error["message"]


def test_chat_takes_the_same_fields(oai, model, server):
    reply = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=6,
        temperature=0.0,
        frequency_penalty=1.0,
        presence_penalty=0.5,
        extra_body={"repetition_penalty": 1.2, "bad_words": ["7"], "return_token_ids": True},
    )
    assert reply.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], presence_penalty=9
        )
    assert err.value.body["param"] == "presence_penalty"
