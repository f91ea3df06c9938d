"""Per-pair tensors padded into one batch, with the mask saying which rows are real."""

from __future__ import annotations

import torch


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` (each [T_i, ...], same trailing shape) right-padded with zeros to
    [B, max T_i, ...], and the [B, max T_i] bool mask that is True on real rows. Padding
    keeps autograd: gradients flow back into every row."""
    if not rows:
        raise ValueError("nothing to pad: no rows")
    width = max(row.shape[0] for row in rows)
    padded = torch.stack(
        [torch.nn.functional.pad(row, _pad_spec(row, width - row.shape[0])) for row in rows]
    )
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=padded.device)
    for i, row in enumerate(rows):
        mask[i, : row.shape[0]] = True
    return padded, mask


def _pad_spec(row: torch.Tensor, missing: int) -> tuple[int, ...]:
    # F.pad lists (before, after) pairs from the last dimension backwards.
    return (0, 0) * (row.dim() - 1) + (0, missing)
