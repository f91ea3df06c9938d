"""SGLang's native `POST /generate` (text / input_ids, sampling_params, return_logprob,
streaming), with the bodies slime (`slime/rollout/sglang_rollout.py`,
`sglang_streaming_rollout.py`) and AReaL (`areal/engine/sglang_remote.py`) send, read the
way they read the reply; seed 002's body keeps its shape."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from rlserve.server.sglang_request import is_sglang_body
from rlserve.server.weight_versions import version_spans
from tests.support.servers import RunningServer

PROMPT = "What is 2 + 3?"


@pytest.fixture(scope="module")
def http(server: RunningServer):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def prompt_ids(http: httpx.Client) -> list[int]:
    return http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]


def generate(http: httpx.Client, body: dict[str, Any]) -> Any:
    resp = http.post("/generate", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def slime_body(prompt_ids: list[int], max_new_tokens: int = 8) -> dict[str, Any]:
    """slime's GenerateState.sampling_params with its default rollout arguments."""
    sampling_params = {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "max_new_tokens": max_new_tokens,
        "stop": None,
        "stop_token_ids": None,
        "skip_special_tokens": False,
        "no_stop_trim": True,
        "spaces_between_special_tokens": False,
    }
    return {"sampling_params": sampling_params, "return_logprob": True, "input_ids": prompt_ids}


def test_slime_body_and_reply(http, prompt_ids) -> None:
    output = generate(http, slime_body(prompt_ids))
    meta = output["meta_info"]
    tokens = [item[1] for item in meta["output_token_logprobs"]]  # as slime reads them
    log_probs = [item[0] for item in meta["output_token_logprobs"]]
    count = len(tokens)
    assert tokens == output["output_ids"] and count == meta["completion_tokens"]
    assert all(lp <= 0 for lp in log_probs) and all(
        e[2] is None for e in meta["output_token_logprobs"]
    )
    reason = meta["finish_reason"]  # slime's statuses: length / abort / stop
    assert reason in ({"type": "length", "length": 8}, {"type": "stop", "matched": tokens[-1]})
    assert meta["prompt_tokens"] == len(prompt_ids) and meta["cached_tokens"] >= 0
    assert meta["weight_version"] == "default" and meta["input_token_logprobs"] == []
    assert meta["weight_versions"] == [{"version": "default", "start": 0, "end": count}]
    assert len(meta["policy_versions"]) == len(meta["sampling_logprobs"]) == count
    assert isinstance(output["text"], str) and meta["e2e_latency"] >= 0


def test_areal_body_and_reply(http, prompt_ids) -> None:
    sample_params = {
        "top_p": 1.0,
        "top_k": int(1e8),
        "max_new_tokens": 6,
        "temperature": 1.0,
        "stop_token_ids": [],
        "ignore_eos": False,
        "skip_special_tokens": True,
        "frequency_penalty": 0.0,
    }
    payload = {
        "input_ids": prompt_ids.copy(),
        "image_data": None,
        "sampling_params": sample_params,
        "return_logprob": True,
        "stream": False,
    }
    meta_info = generate(http, payload)["meta_info"]
    output_tokens = [x[1] for x in meta_info["output_token_logprobs"]]
    assert len(output_tokens) == meta_info["completion_tokens"] <= 6
    # AReaL sends no seed: the sample may end early (EOS) or at max_new_tokens.
    finish = meta_info["finish_reason"]["type"]
    assert finish == "stop" if len(output_tokens) < 6 else finish in ("length", "stop")
    assert meta_info.get("routed_experts") is None


def test_greedy_logprobs_match_the_seed_body(http, prompt_ids) -> None:
    sglang = generate(
        http,
        {
            "input_ids": prompt_ids,
            "sampling_params": {"temperature": 0, "max_new_tokens": 6},
            "return_logprob": True,
        },
    )
    seed = generate(http, {"input_ids": prompt_ids, "temperature": 0, "max_tokens": 6})
    assert sglang["output_ids"] == seed["completion_ids"] and sglang["text"] == seed["text"]
    lps = [e[0] for e in sglang["meta_info"]["output_token_logprobs"]]
    assert lps == pytest.approx(seed["logprobs"], abs=1e-5)


def test_prompt_logprobs_top_logprobs_and_text(http, prompt_ids) -> None:
    body = {
        "text": PROMPT,
        "sampling_params": {"temperature": 0, "max_new_tokens": 3},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
        "return_prompt_token_ids": True,
    }
    output = generate(http, body)
    meta = output["meta_info"]
    inputs = meta["input_token_logprobs"]
    assert [e[1] for e in inputs] == prompt_ids == output["prompt_token_ids"]
    assert inputs[0][0] is None and all(e[0] <= 0 for e in inputs[1:])
    assert meta["input_top_logprobs"][0] is None and len(meta["input_top_logprobs"]) == len(inputs)
    for top in meta["output_top_logprobs"]:
        assert len(top) == 2 and top[0][0] >= top[1][0] and isinstance(top[0][2], str)
    greedy = [e[1] for e in meta["output_token_logprobs"]]
    assert [top[0][1] for top in meta["output_top_logprobs"]] == greedy
    tail = generate(http, {**body, "logprob_start_len": len(prompt_ids) - 2})
    assert tail["meta_info"]["input_token_logprobs"] == inputs[-2:]


def test_batch_with_n_is_prompt_major(http) -> None:
    body = {
        "text": ["1 + 1 =", "2 + 2 ="],
        "sampling_params": {"max_new_tokens": 3, "n": 2, "sampling_seed": 5},
        "rid": "job",
    }
    outputs = generate(http, body)
    assert len(outputs) == 4 and len({o["meta_info"]["id"] for o in outputs}) == 4
    lengths = [o["meta_info"]["prompt_tokens"] for o in outputs]
    assert lengths[0] == lengths[1] and lengths[2] == lengths[3]
    single = generate(
        http,
        {"text": ["1 + 1 =", "2 + 2 ="], "rid": "job", "sampling_params": {"max_new_tokens": 2}},
    )
    assert [o["meta_info"]["id"] for o in single] == ["job_0", "job_1"]
    one = generate(
        http, {"text": "1 + 1 =", "rid": "mine", "sampling_params": {"max_new_tokens": 2}}
    )
    assert one["meta_info"]["id"] == "mine"


def test_per_prompt_sampling_params(http) -> None:
    body = {
        "input_ids": [[1, 2, 3], [4, 5]],
        "sampling_params": [
            {"max_new_tokens": 2, "ignore_eos": True},
            {"max_new_tokens": 4, "ignore_eos": True},
        ],
        "return_logprob": [True, False],
    }
    first, second = generate(http, body)
    assert (
        first["meta_info"]["completion_tokens"] == 2
        and "output_token_logprobs" in first["meta_info"]
    )
    assert second["meta_info"]["completion_tokens"] == 4
    assert "output_token_logprobs" not in second["meta_info"]


def test_stop_string_matched_and_trimmed_unless_no_stop_trim(http) -> None:
    base = {"text": PROMPT, "sampling_params": {"temperature": 0, "max_new_tokens": 12}}
    free = generate(http, base)["text"]
    stop = free[len(free) // 2]
    trimmed = generate(
        http, {**base, "sampling_params": {**base["sampling_params"], "stop": [stop]}}
    )
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert not trimmed["text"].endswith(stop)
    kept = generate(
        http,
        {
            **base,
            "sampling_params": {**base["sampling_params"], "stop": stop, "no_stop_trim": True},
        },
    )
    assert kept["text"].endswith(stop) and kept["output_ids"] == trimmed["output_ids"]


def _events(http: httpx.Client, body: dict[str, Any]) -> list[Any]:
    events = []
    with http.stream("POST", "/generate", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data:"):
                data = line[len("data:") :].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_streaming_is_cumulative_as_slime_reads_it(http, prompt_ids) -> None:
    body = {**slime_body(prompt_ids, 6), "stream": True}
    body["sampling_params"]["temperature"] = 0
    events = _events(http, body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) >= 2 and all("index" not in c for c in chunks)
    for earlier, later in zip(chunks, chunks[1:], strict=False):
        assert later["output_ids"][: len(earlier["output_ids"])] == earlier["output_ids"]
        assert later["text"].startswith(earlier["text"])
    assert [c["meta_info"]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    whole = generate(http, {**body, "stream": False})
    assert last["output_ids"] == whole["output_ids"] and last["text"] == whole["text"]
    assert [e[1] for e in last["meta_info"]["output_token_logprobs"]] == last["output_ids"]


def test_streaming_a_batch_indexes_its_chunks(http) -> None:
    body = {
        "text": ["1 +", "2 +"],
        "sampling_params": {"max_new_tokens": 2, "n": 2},
        "stream": True,
    }
    events = _events(http, body)
    finished = {c["index"] for c in events[:-1] if c["meta_info"]["finish_reason"]}
    assert events[-1] == "[DONE]" and finished == {0, 1, 2, 3}


def test_weight_version_label_is_reported(http, server) -> None:
    state = server.app.state.rlserve
    resp = http.post("/update_weight_version", json={"new_version": "step-7"})
    assert resp.status_code == 200, resp.text
    try:
        meta = generate(http, {"text": PROMPT, "sampling_params": {"max_new_tokens": 2}})[
            "meta_info"
        ]
        assert meta["weight_version"] == "step-7"
        assert meta["weight_versions"] == [{"version": "step-7", "start": 0, "end": 2}]
    finally:
        state.set_weight_version("default")


def test_seed_bodies_keep_their_shape(http, prompt_ids) -> None:
    seed = generate(http, {"prompt": PROMPT, "max_tokens": 2})
    assert {"request_id", "completion_ids", "metadata"} <= set(seed) and "meta_info" not in seed
    ids_only = generate(http, {"input_ids": prompt_ids, "max_tokens": 2})
    assert "completion_ids" in ids_only
    assert is_sglang_body({"input_ids": [1], "sampling_params": {}})
    assert not is_sglang_body({"prompt": "x", "sampling_params": {}})
    assert not is_sglang_body({"input_ids": [1], "max_tokens": 3})


BAD = [
    ({"text": "a", "input_ids": [1]}, "text"),
    ({}, "text"),
    ({"text": []}, "text"),
    ({"text": "a", "sampling_params": {"temperature": -1}}, "sampling_params.temperature"),
    ({"text": "a", "sampling_params": {"temperature": "hot"}}, "sampling_params.temperature"),
    ({"text": "a", "sampling_params": {"max_new_tokens": 0}}, "sampling_params.max_new_tokens"),
    ({"text": "a", "sampling_params": {"max_new_tokens": 10**6}}, "sampling_params.max_new_tokens"),
    ({"text": "a", "sampling_params": {"sampling_seed": 2**64}}, "sampling_params.sampling_seed"),
    ({"text": "a", "sampling_params": {"json_schema": "{"}}, "sampling_params.json_schema"),
    ({"text": "a", "sampling_params": {"json_schema": "[1]"}}, "sampling_params.json_schema"),
    ({"text": "a", "sampling_params": {"json_schema": {}}}, "sampling_params.json_schema"),
    (
        {"text": "a", "sampling_params": {"json_schema": '{"type": "nope"}'}},
        "sampling_params.json_schema",
    ),
    ({"text": "a", "sampling_params": {"regex": "("}}, "sampling_params.regex"),
    ({"text": "a", "sampling_params": {"regex": ""}}, "sampling_params.regex"),
    ({"text": "a", "sampling_params": {"ebnf": "root ::= ::="}}, "sampling_params.ebnf"),
    ({"text": "a", "sampling_params": {"ebnf": "root ::= missing"}}, "sampling_params.ebnf"),
    (
        {"text": "a", "sampling_params": {"regex": "a", "ebnf": 'root ::= "a"'}},
        "sampling_params.ebnf",
    ),
    ({"text": "a", "sampling_params": {"structural_tag": "{}"}}, "sampling_params.structural_tag"),
    ({"text": "a", "sampling_params": {"stop_regex": "x"}}, "sampling_params.stop_regex"),
    ({"text": "a", "sampling_params": "fast"}, "sampling_params"),
    ({"text": ["a", "b"], "sampling_params": [{}]}, "sampling_params"),
    ({"text": ["a", "b"], "sampling_params": [{"n": 1}, {"n": 2}]}, "sampling_params.n"),
    ({"text": "a", "return_logprob": [True]}, "return_logprob"),
    ({"text": "a", "return_logprob": True, "top_logprobs_num": -1}, "top_logprobs_num"),
    ({"text": "a", "return_logprob": True, "top_logprobs_num": 10**4}, "top_logprobs_num"),
    ({"text": "a", "return_logprob": True, "logprob_start_len": -2}, "logprob_start_len"),
    ({"input_ids": [1, 2], "return_logprob": True, "logprob_start_len": 3}, "logprob_start_len"),
    ({"text": "a", "image_data": "http://x/cat.png"}, "image_data"),
    ({"text": "a", "return_routed_experts": True}, "return_routed_experts"),
    ({"text": "a", "token_ids_logprob": [1]}, "token_ids_logprob"),
    ({"input_ids": [[1], [2]], "rid": ["only-one"]}, "rid"),
    ({"input_ids": [10**9], "sampling_params": {}}, "input_ids"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_sglang_bodies_are_400(http, body, param) -> None:
    body = {"sampling_params": {"max_new_tokens": 2}, **body} if body else {"rid": "x"}
    resp = http.post("/generate", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_unknown_lora_path_is_404(http) -> None:
    resp = http.post("/generate", json={"text": "a", "lora_path": "nope"})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "lora_path"


def test_version_spans() -> None:
    assert version_spans([], current="v0") == [{"version": "v0", "start": 0, "end": 0}]
    assert version_spans([3, 3, 4]) == [
        {"version": 3, "start": 0, "end": 2},
        {"version": 4, "start": 2, "end": 3},
    ]
    labels = {1: "a", 2: "a", 3: "b"}
    assert version_spans([1, 2, 3, 3], labels.get) == [
        {"version": "a", "start": 0, "end": 2},
        {"version": "b", "start": 2, "end": 4},
    ]


# SGLang's grammar fields (sampling_params.json_schema / regex / ebnf), as slime and AReaL
# pass them through from their rollout configs.
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 99},
        "unit": {"enum": ["cm", "m"]},
    },
    "required": ["answer", "unit"],
    "additionalProperties": False,
}


def constrained(http: httpx.Client, grammar: dict[str, str], n: int = 4) -> list[dict]:
    sampling = {"max_new_tokens": 48, "temperature": 1.0, "sampling_seed": 7, "n": n}
    replies = generate(http, {"text": PROMPT, "sampling_params": {**sampling, **grammar}})
    return replies if isinstance(replies, list) else [replies]


def test_json_schema_output_parses_and_matches(http) -> None:
    # The tiny model loves the free whitespace JSON allows (SGLang's default too): turned
    # off inside the schema with llguidance's `x-guidance` option (SGLang's llguidance
    # backend reads it the same way).
    compact = {**SCHEMA, "x-guidance": {"whitespace_flexible": False}}
    for reply in constrained(http, {"json_schema": json.dumps(compact)}):
        value = json.loads(reply["text"])
        assert set(value) == {"answer", "unit"}, reply["text"]
        assert isinstance(value["answer"], int) and 0 <= value["answer"] <= 99
        assert (
            value["unit"] in ("cm", "m") and reply["meta_info"]["finish_reason"]["type"] == "stop"
        )


def test_json_schema_any_is_a_json_object_or_array(http) -> None:
    for reply in constrained(http, {"json_schema": "$$ANY$$"}, n=2):
        if reply["meta_info"]["finish_reason"]["type"] == "stop":
            assert isinstance(json.loads(reply["text"]), (dict, list))
        else:  # cut at max_new_tokens: still a prefix of an object or array
            assert reply["text"].lstrip()[:1] in ("{", "[")


def test_regex_output_fullmatches(http) -> None:
    pattern = r"(yes|no), [0-9]{2} (cm|m)"
    for reply in constrained(http, {"regex": pattern}):
        assert re.fullmatch(pattern, reply["text"]), reply["text"]


def test_ebnf_in_sglangs_gbnf_dialect(http) -> None:
    ebnf = 'root ::= answer " " unit\nanswer ::= [1-9] [0-9]?\nunit ::= "cm" | "m"'
    for reply in constrained(http, {"ebnf": ebnf}):
        assert re.fullmatch(r"[1-9][0-9]? (cm|m)", reply["text"]), reply["text"]


def test_free_text_does_not_follow_the_grammar(http) -> None:
    """The counterpart: without the field the same samples are not in the language."""
    replies = constrained(http, {})
    assert not all(re.fullmatch(r"[1-9][0-9]? (cm|m)", r["text"]) for r in replies)


def test_only_one_grammar_with_sglangs_message(http) -> None:
    grammar = {"json_schema": json.dumps(SCHEMA), "regex": "a"}
    resp = http.post("/generate", json={"text": "a", "sampling_params": grammar})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["message"] == "Only one of regex, json_schema, or ebnf can be set."
    assert error["param"] == "sampling_params.regex"


def test_a_bad_grammar_names_its_field_and_keeps_the_server(http) -> None:
    bad = http.post("/generate", json={"text": "a", "sampling_params": {"json_schema": "{"}})
    assert "Failed to compile json grammar" in bad.json()["error"]["message"]
    assert constrained(http, {"regex": "[ab]{3}"}, n=1)[0]["text"] in {
        a + b + c for a in "ab" for b in "ab" for c in "ab"
    }
