"""The Hugging Face backend: `transformers` `generate` per request, one forward to score.

It is the reference the native engine is checked against (tokens for greedy, logprobs to
1e-4 in fp32), and the backend to train through: `logits` runs under the caller's grad
mode, so a loss on it backpropagates into `backend.model`.

What `generate` honours of `SamplingParams`: temperature (0 = greedy), top_p, top_k,
min_p, max_tokens, min_tokens, stop (transformers' `stop_strings`), stop_token_ids,
ignore_eos, seed (`torch.manual_seed` in a forked RNG: the same tokens on every run, but
not the same tokens as the native engine, whose sampler draws its noise differently),
repetition_penalty, truncate_prompt_tokens. A request asking for anything else
(presence / frequency penalties, logit_bias, allowed tokens, bad words, structured output,
prefix_choices) fails alone with a `BackendUnsupported` message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rlserve._checks import check_number, is_int
from rlserve.backends.base import (
    BackendUnsupported,
    Cancels,
    OnDone,
    Request,
    Sample,
    ScorePair,
    cancelled_sample,
    split_pairs,
)
from rlserve.backends.config import BackendConfig, resolved_device, resolved_dtype
from rlserve.backends.hf_generate import generate_one
from rlserve.engine.loading import eos_token_ids
from rlserve.models.loader import read_safetensors
from rlserve.sampling_params import GREEDY_TEMPERATURE_EPS

NAME = "huggingface"


class HuggingFaceBackend:
    """`AutoModelForCausalLM` + `AutoTokenizer` from a local checkpoint folder (None: the
    bundled model). `.model` is the transformers model (a `peft` model after
    `load_adapter`): train it, freeze it, move it as you like."""

    name = NAME

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = BackendConfig(
            kind=NAME,
            model=None if model is None else str(model),
            device=device,
            dtype=dtype,
            max_model_len=max_model_len,
            trust_remote_code=trust_remote_code,
        )
        path = str(config.model_path)
        remote_code = config.trust_remote_code
        self.device = torch.device(resolved_device(config.device))
        torch_dtype = getattr(torch, resolved_dtype(config.dtype, config.model_path))
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=remote_code
        )
        self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code)
        self.vocab_size: int = self.model.config.vocab_size
        self.max_model_len: int | None = max_model_len or getattr(
            self.model.config, "max_position_embeddings", None
        )
        self.eos_token_ids = sorted(
            eos_token_ids(path, self.tokenizer, self.model.config, self.vocab_size)
        )
        self._version = 0
        self.closed = False

    @classmethod
    def from_config(cls, config: BackendConfig) -> HuggingFaceBackend:
        backend = cls(
            config.model,
            config.device,
            config.dtype,
            config.max_model_len,
            config.trust_remote_code,
        )
        if config.lora_name is not None:
            raise ValueError(
                "lora_name: the huggingface backend runs the adapters it loads itself; "
                "call load_adapter(name, path)"
            )
        return backend

    @property
    def policy_version(self) -> int:
        return self._version

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        """One `transformers` generate call per request, in order, on the calling thread;
        a cancelled request not yet started is skipped."""
        self._check_open()
        cancels = Cancels(on_done, len(requests))
        for k, (prompt, params) in enumerate(requests):
            cancels.poll()
            if cancels.asked(k):
                cancels.report(k, cancelled_sample())
            else:
                cancels.report(k, self._generate_one(prompt, params))

    def _generate_one(self, prompt: list[int], params: Any) -> Sample:
        problem = self._check_prompt(prompt)
        if problem is not None:
            return Sample.failed(f"request rejected: {problem}")
        try:
            sample = generate_one(self, prompt, params)
        except BackendUnsupported as exc:
            return Sample.failed(str(exc))
        sample.weight_versions = [self._version] * len(sample.token_ids)
        return sample

    def _check_prompt(self, prompt: object) -> str | None:
        if not isinstance(prompt, list) or not prompt or not all(is_int(t) for t in prompt):
            return "the prompt must be a non-empty list of token ids"
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            return f"prompt token id {bad[0]} is outside the vocabulary (size {self.vocab_size})"
        if self.max_model_len is not None and len(prompt) >= self.max_model_len:
            return f"the prompt ({len(prompt)} tokens) leaves no room in {self.max_model_len}"
        return None

    def score(self, pairs: list[ScorePair], temperature: float = 1.0) -> list[list[float]]:
        """log_softmax(logits / T) of each response token (T = 1 for temperature 0, as a
        greedy `generate` reports), without autograd."""
        scale = _score_temperature(temperature)
        with torch.no_grad():
            rows = self.logits(pairs)
        scores = []
        for response, logits in zip(split_pairs(pairs)[1], rows, strict=True):
            logprobs = torch.log_softmax(logits / scale, dim=-1)
            target = torch.tensor(list(response), device=logprobs.device)
            scores.append(logprobs.gather(1, target[:, None])[:, 0].tolist())
        return scores

    def logits(self, pairs: list[ScorePair]) -> list[torch.Tensor]:
        """fp32 [len(response), vocab] per pair, from one forward each, under the caller's
        grad mode: differentiable while `.model` has trainable parameters."""
        self._check_open()
        prompts, responses = split_pairs(pairs)
        rows = []
        for prompt, response in zip(prompts, responses, strict=True):
            problem = self._check_prompt(prompt + response)
            if problem is not None:
                raise ValueError(f"pairs: {problem}")
            ids = torch.tensor([prompt + response], device=self.device)
            logits = self.model(input_ids=ids).logits[0]
            rows.append(logits[len(prompt) - 1 : len(prompt) + len(response) - 1].float())
        return rows

    def update_weights(
        self, weights: Mapping[str, torch.Tensor] | str, version: int | None = None
    ) -> int:
        """A state dict (Hugging Face names) or a safetensors file or folder. Every name,
        shape and dtype is checked before anything is written: on error nothing changes."""
        self._check_open()
        new_version = self._next_version(version)
        if isinstance(weights, (str, Path)):
            items = dict(read_safetensors(weights))
        elif isinstance(weights, Mapping):
            items = dict(weights)
        else:
            raise ValueError(
                f"weights must be a state dict or a safetensors path, got {type(weights).__name__}"
            )
        targets = self._checked_targets(items)
        with torch.no_grad():
            for name, tensor in items.items():
                targets[name].copy_(tensor)
        self._version = new_version
        return new_version

    def _checked_targets(self, items: dict[str, object]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("the update holds no weights")
        params = dict(self.model.state_dict(keep_vars=True))
        for name, tensor in items.items():
            target = params.get(name)
            if target is None:
                raise ValueError(f"unknown weight name {name!r} for this model")
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"weight {name} is a {type(tensor).__name__}, not a tensor")
            if tensor.dtype != target.dtype:
                raise ValueError(
                    f"weight {name} has dtype {tensor.dtype}, the model uses {target.dtype}"
                )
            if tensor.shape != target.shape:
                raise ValueError(
                    f"weight {name} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
        return params

    def _next_version(self, version: int | None) -> int:
        if version is None:
            return self._version + 1
        if not is_int(version) or version <= self._version:
            raise ValueError(
                f"version must be an integer > the current policy version {self._version}, "
                f"got {version!r}"
            )
        return version

    def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT LoRA folder `path` as adapter `name` and run on it from now on (a
        new policy version). Needs `peft`."""
        self._check_open()
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name must be a non-empty string, got {name!r}")
        if not (Path(path) / "adapter_config.json").is_file():
            raise ValueError(f"adapter path {str(path)!r} has no adapter_config.json")
        try:
            from peft import PeftModel
        except ImportError:
            raise BackendUnsupported(NAME, "load adapters", "peft is not installed") from None
        if isinstance(self.model, PeftModel):
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            self.model.load_adapter(str(path), adapter_name=name)
            self.model.set_adapter(name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.eval()
        self._version += 1

    def close(self) -> None:
        """Drop the model (its memory is freed once nothing else holds it); idempotent."""
        if self.closed:
            return
        self.closed = True
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the huggingface backend is closed")


def _score_temperature(temperature: object) -> float:
    """The T scores are taken at; ValueError naming `temperature` for a bad one."""
    value = check_number("temperature", temperature, finite=True)
    if value < 0:
        raise ValueError(f"temperature must be >= 0, got {value}")
    if 0 < value < GREEDY_TEMPERATURE_EPS:
        raise ValueError(
            f"temperature {value} is below {GREEDY_TEMPERATURE_EPS}: generation treats it as "
            "greedy (logprobs at T = 1); score with temperature=0 (T = 1) or larger"
        )
    return 1.0 if value == 0 else float(value)
