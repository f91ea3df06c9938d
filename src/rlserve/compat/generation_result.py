"""`GenerationResult`: what seed 001's `InferenceModule.generate` returns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class GenerationResult:
    """The completions of one `generate` call, prompt by prompt, `num_return_sequences`
    each (so `texts[i * n + j]` is sample j of prompt i).

    `token_ids[k]` are the sampled token ids of `texts[k]`; `logprobs[k]` (with
    `return_logprobs`) a float32 [len(token_ids[k])] tensor of their logprobs, and
    `logits[k]` (with `return_logits`) a float32 [len(token_ids[k]), vocab] tensor, row t
    the logits that chose token t. `metadata` holds per-sample `prompt_token_ids`,
    `finish_reasons`, `weight_versions`, and the call's `backend`, `policy_version`,
    `cache_hits` and `cache_misses` (prompts served from / past the generation cache).

    Iterating a result (or `len`) goes over `texts`, as seed 001's GRPO loop does.
    """

    texts: list[str]
    token_ids: list[list[int]] | None = None
    logprobs: list[torch.Tensor] | None = None
    logits: list[torch.Tensor] | None = None
    metadata: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def __len__(self) -> int:
        return len(self.texts)
