"""Check a weight update against a model without writing to it.

The server reads and checks an update before it pauses or aborts anything, so a bad file
costs no running request its output (the update is all or nothing). Only the model's
parameter names, shapes and dtypes are read, which never change while it serves, so this
may run off the thread that drives the engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from rlserve.models.llama import LlamaModel
from rlserve.models.loader import iter_safetensors, resolve_target

WeightItems = list[tuple[str, torch.Tensor]]


def read_safetensors(path: str | Path, shown: str) -> WeightItems:
    """Every (name, tensor) of the safetensors file or folder `path`; ValueError naming it
    as `shown` (the caller's own spelling, never the server's absolute path)."""
    try:
        return list(iter_safetensors(path))
    except Exception as exc:  # a truncated, foreign or missing file
        detail = str(exc).replace(str(path), shown) or type(exc).__name__
        raise ValueError(f"cannot read safetensors from {shown!r}: {detail}") from exc


def check_weights(model: LlamaModel, items: Iterable[tuple[str, object]]) -> WeightItems:
    """The (name, tensor) pairs of `items` that `model` takes; ValueError for a value that
    is not a tensor, an unknown name, a wrong shape or dtype, or nothing to load."""
    targets = model.hf_weight_targets()
    checked: WeightItems = []
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"weight {name} is a {type(tensor).__name__}, not a tensor")
        target = resolve_target(model, targets, name)
        if target is None:
            continue
        if tensor.dtype != target.dtype:
            raise ValueError(
                f"weight {name} has dtype {tensor.dtype}, the model uses {target.dtype}"
            )
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"weight {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        checked.append((name, tensor))
    if not checked:
        raise ValueError("the update holds no weights of this model")
    return checked
