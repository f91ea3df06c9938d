"""A server whose engine speculates (n-gram): the `openai` SDK gets the tokens a plain
server gives, SGLang's /generate reports the speculation in meta_info, and /metrics counts
it under vLLM's names."""

from __future__ import annotations

import httpx
import openai
import pytest

from rlserve.engine.spec_rows import AlwaysPays
from rlserve.server import ServerConfig
from tests.support.servers import RunningServer

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "max_batch_size": 64}
PROMPTS = [[20 + i, 30 + i, 41, 42, 43] * 4 for i in range(4)]


@pytest.fixture(scope="module")
def spec_server(make_engine):
    engine = make_engine(speculative=NGRAM, num_blocks=64)
    # Speculate whatever the step timings say, so the counts below cannot be zero.
    engine.step_runner.speculator.costs = AlwaysPays()
    running = RunningServer(engine, ServerConfig())
    yield running
    running.close()


def test_openai_sdk_gets_the_plain_servers_tokens(spec_server, server):
    def completion(url: str) -> list[list[int]]:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        reply = client.completions.create(
            model=client.models.list().data[0].id,
            prompt=PROMPTS,
            max_tokens=24,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        return [c.model_extra["token_ids"] for c in sorted(reply.choices, key=lambda c: c.index)]

    assert completion(spec_server.url) == completion(server.url)
    assert spec_server.engine.stats()["spec_accepted_tokens"] > 0


def test_sglang_meta_info_and_metrics_report_speculation(spec_server):
    reply = httpx.post(
        f"{spec_server.url}/generate",
        json={"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 24}},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    meta = reply.json()["meta_info"]
    assert meta["spec_verify_ct"] >= 1
    assert 0 <= meta["spec_num_correct_drafts"] <= meta["spec_num_proposed_drafts"]
    assert meta["spec_accept_length"] == pytest.approx(
        1 + meta["spec_num_correct_drafts"] / meta["spec_verify_ct"]
    )
    assert meta["spec_verify_ct"] + meta["spec_num_correct_drafts"] <= meta["completion_tokens"]
    text = httpx.get(f"{spec_server.url}/metrics", timeout=30).text
    assert "vllm:spec_decode_num_accepted_tokens_total" in text
    assert "rlserve_spec_decode_acceptance_rate" in text


def test_a_bad_speculative_config_is_refused_by_key(make_engine):
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        make_engine(speculative={"method": "ngram", "num_speculative_tokens": 0})
