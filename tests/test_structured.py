"""Structured outputs in the engine: grammar masks, EOS, logprob contract, n > 1, preemption."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
import torch

from rlserve import SamplingParams
from rlserve._checks import ParamError
from rlserve.engine.structured import StructuredOutput
from tests.support.numeric import max_abs_diff

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "unit": {"enum": ["cm", "m", "km"]}},
    "required": ["ok", "unit"],
    "additionalProperties": False,
}
STRICT_JSON = StructuredOutput(json=SCHEMA, any_whitespace=False)


@dataclass
class Params(SamplingParams):
    """SamplingParams with the `structured` field (works before and after it is added)."""

    structured: StructuredOutput | None = None


def prompt_of(engine, text: str = "What is 12 + 30?") -> list[int]:
    return engine.render_chat([{"role": "user", "content": text}])


def run(engine, structured: StructuredOutput, **kw):
    kw = {"temperature": 1.0, "max_tokens": 40, "seed": 3, **kw}
    return engine.generate([prompt_of(engine)], Params(structured=structured, **kw))[0].outputs


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"json": SCHEMA, "regex": "a"}, {"choice": []}, {"regex": ""}, {"json": 3}],
)
def test_structured_output_needs_one_valid_kind(kwargs):
    with pytest.raises(ParamError) as err:
        StructuredOutput(**kwargs)
    assert err.value.field == "structured"


@pytest.mark.parametrize(
    "structured",
    [
        StructuredOutput(json={"type": "objectx"}),
        StructuredOutput(json="{not json"),
        StructuredOutput(regex="a(b"),
        StructuredOutput(grammar="root ::= missing_rule"),
    ],
)
def test_invalid_constraint_is_refused_at_add_request(bundled, structured):
    with pytest.raises(ValueError, match=r"^structured"):
        bundled.add_request(prompt_of(bundled), Params(structured=structured))
    assert not bundled.has_unfinished_requests()


def test_json_schema_outputs_parse_and_end_with_eos(bundled):
    for c in run(bundled, STRICT_JSON, n=3):
        assert c.finish_reason == "stop"
        assert c.token_ids[-1] in bundled.eos_token_ids  # as vLLM: the mask forces EOS
        value = json.loads(c.text)
        assert set(value) == {"ok", "unit"} and isinstance(value["ok"], bool)
        assert value["unit"] in SCHEMA["properties"]["unit"]["enum"]


def test_properties_come_in_the_schemas_order(bundled):
    schema = {**SCHEMA, "properties": dict(reversed(SCHEMA["properties"].items()))}
    c = run(bundled, StructuredOutput(json=schema, any_whitespace=False))[0]
    assert list(json.loads(c.text)) == ["unit", "ok"]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_regex_and_choice(bundled, temperature):
    for c in run(bundled, StructuredOutput(regex=r"[0-9]{2,4} apples"), temperature=temperature):
        assert re.fullmatch(r"[0-9]{2,4} apples", c.text), c.text
    for c in run(bundled, StructuredOutput(choice=["yes", "no"]), n=4, temperature=temperature):
        assert c.text in ("yes", "no") and c.finish_reason == "stop"


def test_grammar_complete_without_eos_stops_at_once(bundled):
    for c in run(bundled, STRICT_JSON, ignore_eos=True):
        assert c.finish_reason == "stop"
        assert c.token_ids[-1] not in bundled.eos_token_ids
        json.loads(c.text)


def test_logprobs_raw_and_sampling_logprobs_under_the_mask(bundled):
    prompt = prompt_of(bundled)
    params = Params(structured=STRICT_JSON, temperature=0.8, max_tokens=40, seed=5)
    c = bundled.generate([prompt], params)[0].outputs[0]
    assert (
        max_abs_diff(bundled.score(prompt, c.token_ids, temperature=0.8), c.logprobs) <= 1e-4
    )  # logprobs near -30
    logits = bundled.logits(prompt + c.token_ids)[len(prompt) - 1 : -1] / 0.8
    grammars = bundled.step_runner.grammars
    matcher = grammars.matcher(STRICT_JSON)
    for t, token in enumerate(c.token_ids):
        mask = grammars.masks([matcher], [True], logits.device)[0]
        assert mask[token]
        expected = torch.log_softmax(logits[t].masked_fill(~mask, float("-inf")), -1)[token]
        assert abs(c.sampling_logprobs[t] - expected.item()) <= 1e-4
        assert c.sampling_logprobs[t] >= c.logprobs[t]
        if token not in bundled.eos_token_ids:
            matcher.advance(token)


def test_seeded_samples_do_not_depend_on_the_batch(bundled):
    structured = StructuredOutput(regex=r"[a-z ]{5,30}\.")
    params = Params(structured=structured, temperature=1.0, max_tokens=30, seed=11, n=3)
    alone = bundled.generate([prompt_of(bundled)], params)[0]
    free = SamplingParams(temperature=1.0, max_tokens=30, seed=2)
    batch = bundled.generate(
        [prompt_of(bundled, "hi"), prompt_of(bundled), prompt_of(bundled, "2+2?")],
        [free, params, free],
    )[1]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in batch.outputs]
    assert len({tuple(c.token_ids) for c in alone.outputs}) > 1  # each fork its own path


def test_preemption_keeps_the_constraint_and_the_tokens(make_engine, bundled):
    pattern = r"[a-z0-9 ]{60}"
    params = Params(
        structured=StructuredOutput(regex=pattern), temperature=1.0, max_tokens=80, seed=1
    )
    prompts = [prompt_of(bundled, f"What is {a} + {a + 3}?") for a in range(10)]
    small = make_engine(num_blocks=40, block_size=4)
    outs = small.generate(prompts, params)
    assert small.stats()["preemptions"] > 0
    bundled.reset_prefix_cache()
    assert [o.outputs[0].token_ids for o in outs] == [
        o.outputs[0].token_ids for o in bundled.generate(prompts, params)
    ]
    assert all(re.fullmatch(pattern, o.outputs[0].text) for o in outs)


def test_abort_mid_grammar_frees_everything(bundled):
    structured = StructuredOutput(regex=r"[a-z ]{40}")
    rid = bundled.add_request(prompt_of(bundled), Params(structured=structured, max_tokens=50))
    for _ in range(4):
        bundled.step()
    assert bundled.abort(rid)
    (out,) = bundled.step()
    assert out.finished and out.outputs[0].finish_reason == "abort"


def test_matcher_is_rebuilt_from_the_output_tokens(bundled):
    structured = StructuredOutput(regex=r"[0-9]{6}")
    c = run(bundled, structured, ignore_eos=True)[0]
    grammars = bundled.step_runner.grammars
    seq = type("Seq", (), {})()  # any object with a sequence's token fields
    seq.token_ids, seq.num_prompt_tokens = [1, 2] + c.token_ids[:3], 2
    matcher = grammars.follow(seq, structured)
    assert matcher.num_consumed == 3 and not matcher.is_stopped
    seq.token_ids = [1, 2] + c.token_ids
    assert grammars.follow(seq, structured).is_stopped
