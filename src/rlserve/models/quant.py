"""int8 weight-only quantisation (`quantization="int8"`, seed 004's `int8_wo`).

Each decoder Linear (fused q/k/v, o, fused gate/up, down) keeps its weight as int8 with one
fp32 scale per output channel (symmetric: scale = max|row| / 127); decode reads a quarter
of fp32's weight bytes. Activations stay in the engine's float dtype (the AVX512-VNNI kernel
multiplies them as per-row int16, 256x finer than the weights' step), logits are fp32.
The embedding stays float (a lookup reads only the rows it needs, and a tied head shares it),
and so does an untied `lm_head`: logits are what logprobs are made of, and RL wants them as
close to the trainer's as it can get.

Per-output-channel scales make every row independent, so a weight update of any row slice
(q_proj inside the fused qkv, gate_proj inside gate_up) re-quantises just those rows in
place: `QuantizedLinear.weight` is an `Int8Weight` view that the loader copies into as it
would into a float parameter. LoRA adapters work unchanged: they are added to the output.
"""

from __future__ import annotations

import torch
from torch import nn

from rlserve.config import QUANTIZATIONS
from rlserve.models.int8_matmul import int8_linear, quantize_rows


@torch.no_grad()
def quantize_per_channel(
    weight: torch.Tensor, use_kernel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (q [N, K] int8, scale [N] fp32), weight ~ q * scale.
    The kernel (vectorised, fused: it is what a weight update pays) and torch ops give the
    same numbers."""
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor, got {weight.ndim}-D {weight.dtype}")
    fast = quantize_rows(weight) if use_kernel else None
    if fast is not None:
        return fast
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w * (1.0 / scale)[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[:, None]).to(dtype)


class Int8Weight:
    """Rows [lo, hi) of a QuantizedLinear's weight, shaped and typed like the float weight it
    replaces. `copy_` quantises into those rows; `dequantize()` reads them back."""

    def __init__(self, owner: QuantizedLinear, lo: int, hi: int) -> None:
        self.owner, self.lo, self.hi = owner, lo, hi

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.hi - self.lo, self.owner.in_features))

    @property
    def dtype(self) -> torch.dtype:
        return self.owner.dtype

    @property
    def device(self) -> torch.device:
        return self.owner.qweight.device

    def is_floating_point(self) -> bool:
        return True

    def __getitem__(self, rows: slice) -> Int8Weight:
        start, stop, step = rows.indices(self.hi - self.lo)
        if step != 1:
            raise ValueError("an int8 weight is sliced by contiguous rows only")
        return Int8Weight(self.owner, self.lo + start, self.lo + stop)

    @torch.no_grad()
    def copy_(self, tensor: torch.Tensor) -> Int8Weight:
        if tuple(tensor.shape) != tuple(self.shape):
            raise ValueError(f"weight has shape {tuple(tensor.shape)}, expected {self.shape}")
        q, scale = quantize_per_channel(tensor.to(self.device))
        self.owner.qweight[self.lo : self.hi].copy_(q)
        self.owner.scale[self.lo : self.hi].copy_(scale)
        return self

    def dequantize(self) -> torch.Tensor:
        o = self.owner
        return dequantize(o.qweight[self.lo : self.hi], o.scale[self.lo : self.hi], o.dtype)


class QuantizedLinear(nn.Module):
    """A Linear whose weight is int8 per output channel; computes in `dtype`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = linear.weight.dtype
        q, scale = quantize_per_channel(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = linear.bias  # float, as loaded (a Parameter or None)

    @property
    def weight(self) -> Int8Weight:
        return Int8Weight(self, 0, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.qweight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


QUANTIZED_LINEARS = (("self_attn", "qkv_proj"), ("self_attn", "o_proj"))
QUANTIZED_LINEARS += (("mlp", "gate_up_proj"), ("mlp", "down_proj"))


def check_quantization(quantization: object) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(
            f"quantization must be None or one of {list(QUANTIZATIONS)}, got {quantization!r}"
        )


@torch.no_grad()
def quantize_model(model: nn.Module, quantization: str | None) -> nn.Module:
    """Replace the decoder Linears of a loaded LlamaModel by QuantizedLinear (in place; the
    float weights are freed). None leaves the model as it is."""
    check_quantization(quantization)
    if quantization is None:
        return model
    for layer in model.layers:  # type: ignore[attr-defined]
        for block_name, linear_name in QUANTIZED_LINEARS:
            block = getattr(layer, block_name)
            linear = getattr(block, linear_name)
            if isinstance(linear, nn.Linear):
                setattr(block, linear_name, QuantizedLinear(linear))
    return model
