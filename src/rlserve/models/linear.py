"""The one matmul seam: `linear(x, weight, bias)`, F.linear semantics.

On CPU in fp32, weights of at least ONEDNN_MIN_WEIGHT elements go through oneDNN's
inner-product kernel instead of MKL's sgemm, which `torch.nn.functional.linear` uses: on
AMD CPUs MKL takes slow paths, and oneDNN is about 1.8x faster at batch 1 and 2-3x faster
at batch 2-512 (`bench/kernels.py` measures both). Smaller weights stay on F.linear:
there oneDNN's fixed cost per call (30-60 us) outweighs the matmul (measured 2026-12-01 on
an Intel Xeon: the bundled model decodes 1.15-1.36x faster so, the ~48M shape as fast or
faster). The choice depends on the shape only, so a machine always computes the same
numbers. oneDNN reads the dense weight on every call, so in-place weight updates take
effect immediately, as with F.linear.

In bf16 on CPU, `Linear` can also keep a copy of its weight in oneDNN's blocked layout
(`RLSERVE_BF16_PACKED=1`). Measured (bench/step_profile.py --compare RLSERVE_BF16_PACKED=1,
1 thread): its linears run 1.17-1.58x faster alone, 1.1-1.25x inside a step of the ~48M
shape, but the copy costs the layer weights' bytes again (+0.85 GB at 0.6B) and every
weight update a re-pack (~0.3 s at ~48M, ~3 s at 0.6B, single thread), so it stays opt-in.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN = HAS_ONEDNN  # the fp32 path for big weights (see the module docstring)
ONEDNN_MIN_WEIGHT = 1 << 20
CAN_PACK = HAS_ONEDNN and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
PACK_BATCH_HINT = 16  # oneDNN picks the blocked layout for this batch; any batch then runs


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if (
        ONEDNN
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.numel() >= ONEDNN_MIN_WEIGHT
    ):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def packing_enabled() -> bool:
    return os.environ.get("RLSERVE_BF16_PACKED", "0") == "1"


class Linear(nn.Linear):
    """nn.Linear through `linear` (or through a packed bf16 copy, see `packed_weight`)."""

    _packed: tuple[int, int, torch.Tensor] | None = None  # (weight version, data_ptr, copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed_weight(x)
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return linear(x, self.weight, self.bias)

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The weight reordered into oneDNN's blocked bf16 layout, or None (dense path).

        The copy costs the weight's bytes again in memory; it is remade on the first call
        after any in-place write to the weight (a loader update bumps the weight's version
        counter; a new `.data` changes its pointer), so updates stay exact."""
        w = self.weight
        if not (
            CAN_PACK
            and packing_enabled()
            and x.device.type == "cpu"
            and x.dtype == w.dtype == torch.bfloat16
            and not w.is_inference()  # no version counter: an update could not be seen
        ):
            return None  # a copy made while enabled stays, keyed to the weight it packed
        key = (w._version, w.data_ptr())
        if self._packed is None or self._packed[:2] != key:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_BATCH_HINT)
            self._packed = (*key, packed)
        return self._packed[2]
