"""vLLM fidelity of /v1/completions and /v1/chat/completions: lengths bounded by the
context (not a fixed server limit), null token fields, echo's first logprob, cached-token
usage, `created`, and the request-shape 400s (stream_options, seeds, content types)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from rlserve.sampling_params import SamplingParams
from rlserve.server import ServerConfig
from rlserve.server.errors import APIError
from rlserve.server.sampling import CONTEXT_END, fit_context, resolve_max_tokens
from tests.support.servers import TEST_MODEL, RunningServer

CONTEXT = 48  # a small --max-model-len: "the rest of the context" is cheap to generate
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def server(make_engine) -> Iterator[RunningServer]:
    """No --max-tokens: the context is the only bound."""
    engine = make_engine(TEST_MODEL, max_model_len=CONTEXT, max_num_seqs=8)
    running = RunningServer(engine, ServerConfig(max_tokens=None, flush_interval_ms=1.0))
    yield running
    running.close()


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _error(resp: httpx.Response) -> dict:
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


# ---- lengths ------------------------------------------------------------------------------


def test_chat_without_max_tokens_gets_the_rest_of_the_context(oai, model, server):
    reply = oai.chat.completions.create(model=model, messages=_chat("2+2?"), **GREEDY)
    usage = reply.usage
    assert usage.prompt_tokens + usage.completion_tokens == CONTEXT
    assert reply.choices[0].finish_reason == "length"


def test_completions_without_max_tokens_get_16_as_in_vllm(oai, model, server):
    reply = oai.completions.create(model=model, prompt="1+1=", **GREEDY)
    assert reply.usage.completion_tokens == 16


def test_max_tokens_up_to_the_rest_of_the_context_is_accepted(oai, model, server):
    prompt = oai.completions.create(model=model, prompt="3+4=", max_tokens=1).usage
    rest = CONTEXT - prompt.prompt_tokens
    reply = oai.completions.create(model=model, prompt="3+4=", max_tokens=rest, **GREEDY)
    assert reply.usage.completion_tokens == rest


def test_max_tokens_past_the_context_is_a_400_naming_the_numbers(oai, model, server):
    prompt_tokens = oai.completions.create(model=model, prompt="5+6=", max_tokens=1).usage
    n = prompt_tokens.prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model=model, prompt="5+6=", max_tokens=CONTEXT - n + 1)
    body = err.value.body
    assert body["param"] == "max_tokens"
    expected = f"({CONTEXT - n + 1} > {CONTEXT} - {n})"
    assert expected in body["message"] and "maximum context length" in body["message"]


def test_max_completion_tokens_past_the_context_names_that_field(oai, model, server):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=model, messages=_chat("hi"), max_completion_tokens=CONTEXT
        )
    assert err.value.body["param"] == "max_completion_tokens"
    assert "'max_completion_tokens' is too large" in err.value.body["message"]


def test_max_completion_tokens_wins_over_max_tokens(oai, model, server):
    reply = oai.chat.completions.create(
        model=model, messages=_chat("hi"), max_tokens=9, max_completion_tokens=3, **GREEDY
    )
    assert reply.usage.completion_tokens == 3


def test_a_cap_refuses_more_and_is_the_default():
    assert resolve_max_tokens(None, 32) == 32
    assert resolve_max_tokens(None, None) == CONTEXT_END
    assert resolve_max_tokens(32, 32) == 32
    with pytest.raises(APIError, match="--max-tokens") as err:
        resolve_max_tokens(33, 32)
    assert err.value.param == "max_tokens"


def test_a_default_is_cut_to_the_shortest_prompts_room():
    params = SamplingParams(max_tokens=CONTEXT_END)
    fitted = fit_context(params, [[1] * 10, [1] * 20], 48, requested=None)
    assert fitted.max_tokens == 38
    explicit = SamplingParams(max_tokens=28)
    assert fit_context(explicit, [[1] * 10, [1] * 20], 48, "max_tokens").max_tokens == 28
    with pytest.raises(APIError, match=r"\(29 > 48 - 20\)"):
        fit_context(SamplingParams(max_tokens=29), [[1] * 10, [1] * 20], 48, "max_tokens")


def test_min_tokens_past_the_room_is_a_400():
    params = SamplingParams(max_tokens=CONTEXT_END, min_tokens=40)
    with pytest.raises(APIError) as err:
        fit_context(params, [[1] * 10], 48, requested=None)
    assert err.value.param == "min_tokens"


# ---- response shape -----------------------------------------------------------------------


def test_unrequested_token_fields_are_null(oai, model, server):
    text = oai.completions.create(model=model, prompt="1+2=", max_tokens=2)
    choice = text.choices[0]
    assert (choice.token_ids, choice.prompt_token_ids, choice.prompt_logprobs) == (None,) * 3
    chat = oai.chat.completions.create(model=model, messages=_chat("hi"), max_tokens=2)
    assert (chat.prompt_logprobs, chat.prompt_token_ids, chat.choices[0].token_ids) == (None,) * 3


def test_requested_token_fields_are_filled(oai, model, server):
    extra = {"return_token_ids": True, "prompt_logprobs": 0}
    choice = oai.completions.create(model=model, prompt="1+2=", max_tokens=2, extra_body=extra)
    choice = choice.choices[0]
    assert len(choice.token_ids) == 2 and choice.prompt_token_ids
    assert choice.prompt_logprobs[0] is None and len(choice.prompt_logprobs) > 1


def test_echo_logprobs_start_with_null(oai, model, server):
    reply = oai.completions.create(model=model, prompt="7+1=", max_tokens=2, echo=True, logprobs=1)
    logprobs = reply.choices[0].logprobs
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None for lp in logprobs.token_logprobs[1:])
    assert all(isinstance(top, dict) and top for top in logprobs.top_logprobs[1:])
    assert reply.choices[0].text.startswith("7+1=")


def test_cached_tokens_count_the_prefix_cache(oai, model, server):
    prompt = "The prefix cache serves this prompt the second time it is seen: 12+30="
    first = oai.completions.create(model=model, prompt=prompt, max_tokens=1)
    second = oai.completions.create(model=model, prompt=prompt, max_tokens=1)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens  # whole blocks of the prompt
    stream = oai.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert usage[-1].prompt_tokens_details.cached_tokens == cached


def test_chat_usage_reports_cached_tokens(oai, model, server):
    messages = _chat("The chat template fills a KV block: 9+9?")
    oai.chat.completions.create(model=model, messages=messages, max_tokens=1)
    again = oai.chat.completions.create(model=model, messages=messages, max_tokens=1)
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_created_is_the_time_of_each_response(oai, model, server):
    before = int(time.time())
    reply = oai.completions.create(model=model, prompt="1+1=", max_tokens=1)
    after = int(time.time())
    assert before <= reply.created <= after


# ---- request shape ------------------------------------------------------------------------


def test_stream_options_without_stream_is_a_400(server, model):
    for path, body in (
        ("/v1/completions", {"prompt": "1+1=", "max_tokens": 1}),
        ("/v1/chat/completions", {"messages": _chat("hi"), "max_tokens": 1}),
    ):
        sent = {**body, "model": model, "stream_options": {"include_usage": True}}
        error = _error(httpx.post(server.url + path, json=sent))
        assert error["param"] == "stream_options" and "stream=True" in error["message"]
        ok = httpx.post(server.url + path, json={**sent, "stream": True})
        assert ok.status_code == 200 and ok.text.rstrip().endswith("[DONE]")


def test_seeds_outside_int64_are_a_400(server, model):
    url = server.url + "/v1/completions"
    for seed in (2**63, -(2**63) - 1, 2**64):
        body = {"model": model, "prompt": "1+1=", "max_tokens": 1, "seed": seed}
        assert _error(httpx.post(url, json=body))["param"] == "seed"
    body = {"model": model, "prompt": "1+1=", "max_tokens": 1, "seed": 2**63 - 1}
    assert httpx.post(url, json=body).status_code == 200


def test_non_json_bodies_are_a_400(server, model):
    url = server.url + "/v1/completions"
    form = httpx.post(url, data={"model": model, "prompt": "1+1=", "max_tokens": "1"})
    assert "must be JSON" in _error(form)["message"]
    body = b'{"prompt": "1+1=", "max_tokens": 1}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        resp = httpx.post(url, content=body, headers={"content-type": content_type})
        assert "must be JSON" in _error(resp)["message"], content_type
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json", None):
        headers = {} if content_type is None else {"content-type": content_type}
        assert httpx.post(url, content=body, headers=headers).status_code == 200, content_type


def test_generate_without_cap_or_max_tokens_runs_to_the_context_end(server):
    body = {"prompt": "1+1=", "temperature": 0.0, "ignore_eos": True}
    reply = httpx.post(server.url + "/generate", json=body, timeout=60).json()
    assert len(reply["prompt_ids"]) + len(reply["completion_ids"]) == CONTEXT
    assert reply["finish_reason"] == "length"


def test_generate_max_tokens_past_the_context_is_a_400(server):
    body = {"prompt": "1+1=", "max_tokens": CONTEXT}
    error = _error(httpx.post(server.url + "/generate", json=body))
    assert error["param"] == "max_tokens" and "maximum context length" in error["message"]


def test_admin_json_routes_refuse_form_bodies(server):
    form = httpx.post(server.url + "/resume", data={"recompute_kv": "true"})
    assert "must be JSON" in _error(form)["message"]
    _error(httpx.post(server.url + "/pause", data={"mode": "keep"}))
    paused = httpx.get(server.url + "/is_paused").json()
    assert paused["is_paused"] is False  # refused before anything was paused


def test_continuous_usage_stats_put_running_totals_on_every_chunk(oai, model, server):
    options = {"include_usage": True, "continuous_usage_stats": True}
    stream = oai.completions.create(
        model=model, prompt="1+1=", max_tokens=5, stream=True, stream_options=options, **GREEDY
    )
    chunks = list(stream)
    with_text = [c for c in chunks if c.choices]
    counts = [c.usage.completion_tokens for c in with_text]
    assert counts == sorted(counts) and counts[-1] == 5
    assert all(c.usage.prompt_tokens == chunks[-1].usage.prompt_tokens for c in with_text)
    plain = oai.completions.create(
        model=model,
        prompt="1+1=",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    assert all(c.usage is None for c in plain if c.choices)
