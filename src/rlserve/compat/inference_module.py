"""Seed 001's `InferenceModule`: generation, teacher-forced logits and logprobs, tool calls
and a generation cache, over any `rlserve.backends` backend.

    from rlserve import InferenceModule
    inference = InferenceModule(backend="huggingface")  # model_name None: the bundled model
    result = inference.generate("2+3=", max_new_tokens=8, do_sample=False)
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from rlserve._checks import check_bool, check_number
from rlserve.backends import UNKNOWN_VERSION
from rlserve.backends.complete import Completion, complete, prompt_token_ids
from rlserve.backends.factory import create_backend
from rlserve.compat.generation_cache import GenerationCache
from rlserve.compat.generation_result import GenerationResult
from rlserve.compat.module_options import module_options
from rlserve.compat.seed_sampling import is_determined, seed_sampling_params
from rlserve.compat.teacher_forcing import (
    as_prompt_list,
    logit_rows,
    logprob_rows,
    padded,
    score_pairs,
)
from rlserve.compat.tool_specs import augmented_prompt, openai_tools
from rlserve.sampling_params import SamplingParams
from rlserve.tools.parsers import ToolCall, get_parser


class InferenceModule:
    """One model behind seed 001's API. `backend`: "huggingface" (the seed's default; its
    `.backend.model` is the trainable `transformers` model), "native" (rlserve's engine),
    "auto" (native when it loads the checkpoint), "remote" (an OpenAI-compatible server at
    `base_url`), "tinker", or "vllm" / "sglang" (such a server at `base_url`: neither runs
    in-process here). `backend_kwargs` fill `rlserve.backends.BackendConfig` (`device`,
    `dtype`, `base_url`, `api_key`, ...); an unknown one is a ValueError naming it.

    `cache_size` generations are kept (least recently used dropped; 0: none), and only
    when the output is determined (greedy or seeded), the backend reports its weight
    version (the key) and its weights cannot change unseen (a trainable model can).
    """

    def __init__(
        self,
        model_name: str | None = None,
        backend: str = "huggingface",
        cache_size: int = 1000,
        tool_parser: str = "json",
        **backend_kwargs: Any,
    ) -> None:
        self.cache = GenerationCache(cache_size)
        self.tool_parser_type = tool_parser
        options = module_options(model_name, backend, backend_kwargs)
        self.model_name = model_name
        self.backend = create_backend(options.config)
        if options.gradient_checkpointing:
            self.backend.model.gradient_checkpointing_enable()

    @property
    def tool_parser_type(self) -> str:
        """The tool-call format `parse_tool_calls` reads: "json", "xml", "function", or
        any other `rlserve.tools` parser; settable."""
        return self._tool_parser_name

    @tool_parser_type.setter
    def tool_parser_type(self, name: str) -> None:
        self._tool_parser = get_parser(name)  # ValueError naming the known formats
        self._tool_parser_name = name

    @property
    def cache_stats(self) -> dict[str, int]:
        """Generation-cache hits and misses (prompts looked up), size and capacity."""
        return self.cache.stats

    def generate(
        self,
        prompts: Any,
        use_cache: bool = True,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        do_sample: bool = True,
        num_return_sequences: int = 1,
        return_logits: bool = False,
        return_logprobs: bool = False,
        **kwargs: Any,
    ) -> GenerationResult:
        """`num_return_sequences` completions of each prompt (a string, token ids or a
        message list, or a list of them). `kwargs` are further `SamplingParams` fields
        (`seed`, `stop`, ...). See `GenerationResult` for what comes back."""
        params = seed_sampling_params(
            max_new_tokens, temperature, top_p, top_k, do_sample, num_return_sequences, kwargs
        )
        for name, flag in (
            ("use_cache", use_cache),
            ("return_logits", return_logits),
            ("return_logprobs", return_logprobs),
        ):
            check_bool(name, flag)
        tokenizer = self.backend.tokenizer
        ids = [prompt_token_ids(tokenizer, p) for p in as_prompt_list(prompts)]
        groups, hits, misses = self._complete(ids, params, use_cache)
        samples = [c for group in groups for c in group]
        _raise_failures(samples, params.n)
        return GenerationResult(
            texts=[c.text for c in samples],
            token_ids=[list(c.token_ids) for c in samples],
            logprobs=[torch.tensor(c.logprobs, dtype=torch.float32) for c in samples]
            if return_logprobs
            else None,
            logits=self._sample_logits(samples) if return_logits else None,
            metadata={
                "backend": self.backend.name,
                "policy_version": self.backend.policy_version,
                "prompt_token_ids": [c.prompt_token_ids for c in samples],
                "finish_reasons": [c.finish_reason for c in samples],
                "weight_versions": [c.weight_versions for c in samples],
                "cache_hits": hits,
                "cache_misses": misses,
            },
        )

    def get_logits(self, prompts: Any, responses: Any, return_mask: bool = False) -> Any:
        """[B, T, V] float32 logits of each response token given its prompt (row t
        predicts response token t), zero-padded to the longest response. With
        `return_mask`: (logits, [B, T] bool mask, True on real tokens). Runs under the
        caller's grad mode: differentiable with a trainable Hugging Face model."""
        check_bool("return_mask", return_mask)
        pairs = score_pairs(self.backend.tokenizer, prompts, responses)
        return padded(logit_rows(self.backend, pairs), return_mask)

    def get_logprobs(
        self, prompts: Any, responses: Any, temperature: float = 1.0, return_mask: bool = False
    ) -> Any:
        """[B, T] float32 logprob of each response token, log_softmax(logits / T),
        zero-padded (padding adds nothing to a sum). With `return_mask`: (logprobs, mask).
        Differentiable (computed from the logits) when the model is trainable and grad
        is enabled; otherwise the backend's `score`, the numbers `generate` reports."""
        check_bool("return_mask", return_mask)
        check_number("temperature", temperature, finite=True, positive=True)
        pairs = score_pairs(self.backend.tokenizer, prompts, responses)
        differentiable = torch.is_grad_enabled() and self._trainable()
        rows = logprob_rows(self.backend, pairs, float(temperature), differentiable)
        return padded(rows, return_mask)

    def batch_generate_with_tools(
        self,
        prompts: Any,
        available_tools: list[dict[str, Any]] | None = None,
        max_new_tokens: int = 512,
        **kwargs: Any,
    ) -> tuple[GenerationResult, list[list[ToolCall]]]:
        """Generate with `available_tools` offered (seed-style `{"name", "description",
        "parameters": {"arg": "type"}}` or OpenAI-style definitions): a text prompt
        becomes a user message rendered by the chat template with the tools, or, for a
        tokenizer without one, is followed by the tools and how to call them. `kwargs` are
        `generate`'s. Returns the result and the calls parsed from each text."""
        tools = None if available_tools is None else openai_tools(available_tools)
        ids = [self._tool_prompt_ids(p, tools) for p in as_prompt_list(prompts)]
        result = self.generate(ids, max_new_tokens=max_new_tokens, **kwargs)
        parsed = [self._tool_parser.parse(text, tools).calls for text in result.texts]
        return result, parsed

    def parse_tool_calls(self, text: str) -> list[ToolCall]:
        """The tool calls in `text`, in the `tool_parser_type` format (malformed ones are
        left out)."""
        return self._tool_parser.parse(text).calls

    def clear_cache(self) -> None:
        """Forget every cached generation."""
        self.cache.clear()

    def close(self) -> None:
        """Release the backend (idempotent)."""
        self.backend.close()

    def __enter__(self) -> InferenceModule:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _complete(
        self, ids: list[list[int]], params: SamplingParams, use_cache: bool
    ) -> tuple[list[list[Completion]], int, int]:
        """Completions of every prompt, served from the cache where allowed; (groups,
        cache hits, cache misses)."""
        version = self.backend.policy_version
        if not (use_cache and self._cacheable(params, version)):
            return complete(self.backend, ids, params), 0, 0
        keys = [(version, tuple(prompt), repr(params)) for prompt in ids]
        groups: list[list[Completion] | None] = [self.cache.get(key) for key in keys]
        missing = [k for k, group in enumerate(groups) if group is None]
        if missing:
            fresh = complete(self.backend, [ids[k] for k in missing], params)
            for k, group in zip(missing, fresh, strict=True):
                groups[k] = group
                if not any(c.error for c in group):
                    self.cache.put(keys[k], copy.deepcopy(group))
        hits = len(ids) - len(missing)
        return [copy.deepcopy(g) for g in groups if g is not None], hits, len(missing)

    def _cacheable(self, params: SamplingParams, version: int) -> bool:
        return (
            self.cache.capacity > 0
            and is_determined(params)
            and params.structured is None  # a grammar object has no stable key
            and version != UNKNOWN_VERSION
            and not self._trainable()
        )

    def _trainable(self) -> bool:
        """A model the caller can train in place: its weights change without a version."""
        model = getattr(self.backend, "model", None)
        return isinstance(model, torch.nn.Module) and any(
            p.requires_grad for p in model.parameters()
        )

    def _sample_logits(self, samples: list[Completion]) -> list[torch.Tensor]:
        with torch.no_grad():  # what was generated; get_logits is the differentiable one
            return logit_rows(self.backend, [(c.prompt_token_ids, c.token_ids) for c in samples])

    def _tool_prompt_ids(self, prompt: Any, tools: list[dict[str, Any]] | None) -> list[int]:
        tokenizer = self.backend.tokenizer
        if isinstance(prompt, str) and tools is not None:
            if getattr(tokenizer, "chat_template", None):
                prompt = [{"role": "user", "content": prompt}]
            else:
                prompt = augmented_prompt(prompt, tools, self._tool_parser_name)
        return prompt_token_ids(tokenizer, prompt, tools)


def create_inference_module(
    model_name: str | None = None, backend: str = "auto", **kwargs: Any
) -> InferenceModule:
    """Seed 001's factory: an `InferenceModule`, by default on the best backend for the
    checkpoint ("auto": rlserve's native engine when it loads it, else Hugging Face)."""
    return InferenceModule(model_name, backend=backend, **kwargs)


def _raise_failures(samples: list[Completion], n: int) -> None:
    for k, sample in enumerate(samples):
        if sample.error is None:
            continue
        where = f"prompts[{k // n}]"
        if sample.error.startswith("request rejected"):
            raise ValueError(f"{where}: {sample.error}")
        raise RuntimeError(f"{where}: generation failed: {sample.error}")
