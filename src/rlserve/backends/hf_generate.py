"""One request through `transformers` `generate`, reported as the native engine reports it.

Logprobs come from the raw logits (`output_logits=True`), log_softmax(logits / T) with
T = 1 when greedy: the numbers of DESIGN contract 2, not the processed (top-k / top-p
truncated) scores that `output_scores` returns.
"""

from __future__ import annotations

from typing import Any

import torch

from rlserve.backends.base import BackendUnsupported, Sample
from rlserve.sampling_params import SamplingParams

# SamplingParams fields transformers' generate has no equivalent for, with their "off" value.
_UNSUPPORTED = {
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logit_bias": None,
    "allowed_token_ids": None,
    "bad_words": [],
    "bad_words_token_ids": None,
    "structured": None,
    "prefix_choices": [],
}


def generate_one(backend: Any, prompt: list[int], params: SamplingParams) -> Sample:
    """Sample one completion of `prompt` on `backend` (a HuggingFaceBackend)."""
    _refuse_unsupported(params)
    if params.truncate_prompt_tokens is not None and backend.max_model_len is not None:
        prompt = params.truncated_prompt(prompt, backend.max_model_len)
    room = None if backend.max_model_len is None else backend.max_model_len - len(prompt)
    max_new = params.max_tokens if room is None else min(params.max_tokens, room)
    stop_ids = list(params.stop_token_ids)
    ends = stop_ids if params.ignore_eos else sorted(set(backend.eos_token_ids) | set(stop_ids))
    # An id past the vocabulary never comes: it stands in for "no EOS" (ignore_eos alone).
    options = _generate_options(params, max_new, ends or [backend.vocab_size])
    if params.stop:
        options.update(stop_strings=list(params.stop), tokenizer=backend.tokenizer)
    ids = torch.tensor([prompt], device=backend.device)
    with torch.no_grad(), _seeded(params.seed, backend.device):
        out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
    tokens = out.sequences[0, len(prompt) :].tolist()
    logits = torch.stack([step[0] for step in out.logits])[: len(tokens)].float()
    logprobs = torch.log_softmax(logits / params.logprob_temperature, dim=-1)
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0]
    finish, reason = _finish(backend.tokenizer, tokens, ends, params, max_new)
    return Sample(tokens, chosen.tolist(), [], finish, reason)


def _refuse_unsupported(params: SamplingParams) -> None:
    for name, off in _UNSUPPORTED.items():
        if getattr(params, name) not in (off, None, [], {}):
            raise BackendUnsupported(
                "huggingface", f"honour {name}", "transformers' generate has no equivalent"
            )


def _generate_options(params: SamplingParams, max_new: int, ends: list[int]) -> dict[str, Any]:
    """generate() keyword arguments. Every sampling knob is given, so the checkpoint's
    generation_config.json (e.g. a top_k of 50) never changes what was asked for."""
    options: dict[str, Any] = {
        "max_new_tokens": max_new,
        "min_new_tokens": min(params.min_tokens, max_new),
        "eos_token_id": ends,
        "pad_token_id": ends[0],
        "return_dict_in_generate": True,
        "output_logits": True,
        "repetition_penalty": params.repetition_penalty,
        "top_k": None,
        "top_p": None,
        "min_p": None,
        "temperature": None,
    }
    if params.greedy:
        options["do_sample"] = False
        return options
    options.update(
        do_sample=True,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else 0,
        min_p=params.min_p or None,
    )
    return options


def _finish(
    tokenizer: Any, tokens: list[int], ends: list[int], params: SamplingParams, max_new: int
) -> tuple[str, str | int | None]:
    """(finish_reason, stop_reason) as the engine reports them: an EOS stops with reason
    None, a stop token id with the id, a stop string with the string."""
    if tokens and tokens[-1] in ends:
        last = tokens[-1]
        return "stop", last if last in params.stop_token_ids else None
    if params.stop:
        text = tokenizer.decode(tokens)
        found = [(text.find(s), s) for s in params.stop if s in text]
        if found:
            return "stop", min(found)[1]
    return "length", None


class _seeded:
    """Seed torch's RNG for one request without disturbing anyone else's draws."""

    def __init__(self, seed: int | None, device: torch.device) -> None:
        self.seed = seed
        devices = [device] if device.type == "cuda" else []
        self.fork = torch.random.fork_rng(devices=devices) if seed is not None else None

    def __enter__(self) -> None:
        if self.fork is not None:
            self.fork.__enter__()
            torch.manual_seed(self.seed & 0xFFFF_FFFF_FFFF_FFFF)

    def __exit__(self, *exc: object) -> None:
        if self.fork is not None:
            self.fork.__exit__(*exc)
