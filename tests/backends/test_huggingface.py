"""What only the Hugging Face backend does: logits under the caller's grad mode (a loss on
them trains `.model`), the SamplingParams it refuses per request, its weight checks."""

from __future__ import annotations

import pytest
import torch

from rlserve import SamplingParams
from rlserve.backends import HuggingFaceBackend, complete


@pytest.fixture(scope="module")
def hf():
    backend = HuggingFaceBackend()
    yield backend
    backend.close()


def test_logits_are_differentiable_under_the_callers_grad_mode(hf):
    pairs = [([5, 17, 42], [20, 21]), ([7], [9, 10, 11])]
    hf.model.zero_grad()
    rows = hf.logits(pairs)
    assert all(r.requires_grad for r in rows)
    loss = -sum(
        torch.log_softmax(r, -1).gather(1, torch.tensor(resp)[:, None]).sum()
        for r, (_, resp) in zip(rows, pairs, strict=True)
    )
    loss.backward()
    grads = [p.grad for p in hf.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    hf.model.zero_grad()
    with torch.no_grad():
        assert not any(r.requires_grad for r in hf.logits(pairs))
    hf.model.requires_grad_(False)  # a frozen reference model: no graph at all
    try:
        assert not any(r.requires_grad for r in hf.logits(pairs))
    finally:
        hf.model.requires_grad_(True)


@pytest.mark.parametrize(
    "field",
    [
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"logit_bias": {5: 1.0}},
        {"allowed_token_ids": [5, 6]},
        {"bad_words": ["x"]},
    ],
)
def test_sampling_fields_transformers_lacks_fail_the_request_alone(hf, field):
    (name,) = field
    samples = {}
    requests = [
        ([5, 17], SamplingParams(max_tokens=4, **field)),
        ([5, 17], SamplingParams(max_tokens=4)),
    ]
    hf.generate(requests, samples.__setitem__)
    assert samples[0].error == (
        f"the huggingface backend cannot honour {name}: transformers' generate has no equivalent"
    )
    assert samples[0].finish_reason == "error" and not samples[0].token_ids
    assert samples[1].error is None and len(samples[1].token_ids) == 4


def test_a_prompt_too_long_fails_alone(hf):
    long = [5] * (hf.max_model_len or 1024)
    (refused,), (fine,) = complete(hf, [long, [5, 17]], SamplingParams(max_tokens=3))
    assert refused.error and "no room" in refused.error
    assert fine.error is None and len(fine.token_ids) == 3


def test_max_tokens_are_capped_by_the_context(hf):
    prompt = [5] * ((hf.max_model_len or 1024) - 2)
    ((out,),) = complete(
        hf, [prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    )
    assert out.finish_reason == "length" and len(out.token_ids) == 2


def test_weight_update_checks(hf, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        hf.update_weights({"model.norm.weight": torch.ones(256, dtype=torch.float16)})
    with pytest.raises(ValueError, match="not a tensor"):
        hf.update_weights({"model.norm.weight": [1.0] * 256})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="no weights"):
        hf.update_weights({})
    with pytest.raises(ValueError, match="does not exist"):
        hf.update_weights(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="adapter_config.json"):
        hf.load_adapter("a", str(tmp_path))
    with pytest.raises(ValueError, match="adapter name"):
        hf.load_adapter("", str(tmp_path))
    assert hf.policy_version == 0
