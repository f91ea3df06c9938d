"""The one matmul seam: `linear(x, weight, bias)`, F.linear semantics.

On CPU in fp32 it calls oneDNN's inner-product kernel instead of MKL's sgemm, which
`torch.nn.functional.linear` uses. On this project's CPUs (AMD, AVX-512) MKL takes slow
paths: oneDNN is about 1.8x faster at batch 1 and 2-3x faster at batch 2-512
(`bench/kernels.py` measures both). oneDNN reads the dense weight on every call, so in-place
weight updates take effect immediately, exactly as with F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if ONEDNN and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
