"""`int8_linear(x, q, scale, bias)`: F.linear with an int8 per-output-channel weight.

Small batches (decode) run the AVX-512 kernel, which reads the int8 weight once and widens
it in registers (with VNNI: exact int16 x int8 dot products on activations quantised per
row to int16, whose error is ~250x below the weights' int8 step). Large batches (prefill)
are compute-bound, so there the weight is widened to a dense float matrix once per call and
the float GEMM (`linear`) runs: the widening is a small fraction of a GEMM over that many
rows. Without the kernel (no AVX-512 or no compiler), torch ops do the same, correctly but
slower.
"""

from __future__ import annotations

import torch

from rlserve.models.int8_build import int8_kernel
from rlserve.models.linear import linear

# Above this many rows, widen the weight and run the float GEMM: the VNNI kernel is 2-3x
# fp32 oneDNN up to 8 rows, ~2x at 16, ~1.5x at 32 and even at 64 (bench/quant.py).
KERNEL_MAX_ROWS = 64


def int8_linear(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    lib = int8_kernel() if x.device.type == "cpu" else None
    if lib is not None and 0 < rows <= KERNEL_MAX_ROWS:
        return _kernel_linear(lib, x, q, scale, bias)
    return linear(x, dense_weight(q, scale, x.dtype), bias)


def _kernel_linear(lib, x, q, scale, bias) -> torch.Tensor:
    n, k = q.shape
    x2 = x.reshape(-1, k).to(torch.float32).contiguous()
    y = torch.empty(x2.shape[0], n, dtype=torch.float32)
    b = None if bias is None else bias.to(torch.float32).contiguous()
    lib.linear(
        x2.data_ptr(),
        q.data_ptr(),
        scale.data_ptr(),
        None if b is None else b.data_ptr(),
        y.data_ptr(),
        x2.shape[0],
        n,
        k,
        torch.get_num_threads(),
    )
    return y.view(*x.shape[:-1], n).to(x.dtype)


def dense_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale[:, None] as a dense [N, K] tensor of `dtype`."""
    lib = int8_kernel() if q.device.type == "cpu" else None
    if lib is None or not q.is_contiguous():
        return (q.float() * scale[:, None]).to(dtype)
    out = torch.empty(q.shape, dtype=torch.float32)
    lib.rlserve_int8_dequant(
        q.data_ptr(), scale.data_ptr(), out.data_ptr(), *q.shape, torch.get_num_threads()
    )
    return out if dtype == torch.float32 else out.to(dtype)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The kernel's one-pass per-row quantisation of a 2-D float tensor (what
    `quant.quantize_per_channel` computes with torch ops), or None without the kernel."""
    lib = int8_kernel() if weight.device.type == "cpu" else None
    if lib is None:
        return None
    w = weight.to(torch.float32).contiguous()
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0], dtype=torch.float32)
    lib.rlserve_int8_quantize(
        w.data_ptr(), q.data_ptr(), scale.data_ptr(), *w.shape, torch.get_num_threads()
    )
    return q, scale
