"""Per-layer matmul choice for the draft model's own instance.

`rlserve.models.linear` sends fp32 CPU matmuls to oneDNN, faster at the target's
shapes; at a draft's tiny ones (hidden 128, one row) its fixed cost dominates and
`torch.nn.functional.linear` (MKL) is ~3x faster (30-60 us vs ~10 us per call, measured
with bench/speculative.py's draft). The draft's guesses only affect speed, never outputs,
so each of its Linear modules (and its logits head) is timed both ways once and keeps
the faster.
"""

from __future__ import annotations

import time
import types

import torch
import torch.nn.functional as F
from torch import nn

from rlserve.models.linear import Linear, linear
from rlserve.models.llama import LlamaModel

TIMED_CALLS = 30  # per way and row count
TIMED_ROWS = (1, 4)  # a lone decode, and a few sequences


def _plain_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self.weight, self.bias)


def use_fastest_linears(model: LlamaModel) -> int:
    """Give every `Linear` of `model`, and its logits head, the faster of its own
    matmul and F.linear; returns how many now use F.linear. Only for a model whose
    outputs only affect speed (a draft): the two differ in the last bits."""
    switched = 0
    head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    if head.device.type == "cpu" and _head_seconds(head, F.linear) < _head_seconds(head, linear):
        model.compute_logits = types.MethodType(_plain_logits, model)  # type: ignore[method-assign]
        switched += 1
    for module in model.modules():
        if isinstance(module, Linear) and module.weight.device.type == "cpu":
            if _seconds(module, _plain_forward) < _seconds(module, type(module).forward):
                module.forward = types.MethodType(_plain_forward, module)  # type: ignore[method-assign]
                switched += 1
    return switched


@torch.inference_mode()
def _plain_logits(self: LlamaModel, hidden: torch.Tensor) -> torch.Tensor:
    weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
    return F.linear(hidden, weight).float()


@torch.inference_mode()
def _head_seconds(weight: torch.Tensor, matmul) -> float:
    x = torch.randn(1, weight.shape[1], dtype=weight.dtype)
    matmul(x, weight)  # warm
    start = time.perf_counter()
    for _ in range(TIMED_CALLS):
        matmul(x, weight)
    return time.perf_counter() - start


@torch.inference_mode()
def _seconds(module: Linear, forward) -> float:
    total = 0.0
    for rows in TIMED_ROWS:
        x = torch.randn(rows, module.in_features, dtype=module.weight.dtype)
        forward(module, x)  # warm
        start = time.perf_counter()
        for _ in range(TIMED_CALLS):
            forward(module, x)
        total += time.perf_counter() - start
    return total
