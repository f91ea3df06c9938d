"""Numeric comparison helpers."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _as_float64(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64)
    return torch.tensor(list(values), dtype=torch.float64)


def max_abs_diff(a: torch.Tensor | Sequence[float], b: torch.Tensor | Sequence[float]) -> float:
    """The largest |a - b| over two tensors or number sequences of the same shape (no
    broadcasting: a shape mismatch is an error, as a strict zip would be)."""
    a, b = _as_float64(a), _as_float64(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).abs().max().item()
