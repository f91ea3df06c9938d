"""The decoder layer's small per-token ops, fused on CPU, with torch ops as the reference.

`add_rms_norm` (residual add + RMSNorm) and `qk_norm_rope` (per-head q/k RMSNorm + rotary)
run `fused_ops.cpp` through ctypes on CPU fp32/bf16 contiguous tensors: one pass per row
instead of 6-10 torch ops, whose dispatch (~2-5 us each) dominates at decode batch sizes
(bench/step_profile.py). Everywhere else (CUDA, other dtypes, no compiler, or
`RLSERVE_FUSED_OPS=0`) the same functions run the torch ops below, which round exactly as
transformers does. The kernel rounds as they do op by op and sums squares in torch's own
order, so its results are the same bits (tests/models/test_fused_ops.py compares them per
op and end to end).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from rlserve.models.native_build import build

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused_ops.cpp")
# -ffp-contract=off: no FMA, so each product is rounded as torch rounds it.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
KERNEL_ERROR: list[str] = []  # why the kernel is unavailable, once known


def torch_float_lanes() -> int | None:
    """Floats per vector in torch's CPU sum kernel (its summation order depends on it), or
    None where the kernel does not know torch's order. torch registers its sum kernel for
    AVX2 only, so AVX-512 CPUs run it with 8-float vectors too (measured: 16 lanes give
    other fp32 bits, 8 lanes the same bits)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 8 if capability.startswith("AVX512") or capability == "AVX2" else None


LANES = torch_float_lanes()


def enabled() -> bool:
    """False when `RLSERVE_FUSED_OPS=0` asks for the torch reference ops."""
    return os.environ.get("RLSERVE_FUSED_OPS", "1") != "0"


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded library, or None (reason in `KERNEL_ERROR`, one warning) to use torch ops."""
    if LANES is None:
        KERNEL_ERROR.append(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
        return None
    try:
        lib = ctypes.CDLL(str(build(SOURCE, FLAGS)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"{type(exc).__name__}: {exc} {(getattr(exc, 'stderr', '') or '')[:500]}"
        KERNEL_ERROR.append(reason)
        log.warning("fused ops kernel unavailable, using torch ops: %s", reason)
        return None
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.rlserve_add_rms_norm.argtypes = [i32, p, p, p, i64, i64, f32, i32]
    lib.rlserve_add_rms_norm.restype = i32
    lib.rlserve_qk_norm_rope.argtypes = [i32, p, i64, i64, i64, i64, i64, p, p, p, p, f32, i32]
    lib.rlserve_qk_norm_rope.restype = i32
    return lib


def _kernel_for(*tensors: torch.Tensor | None) -> ctypes.CDLL | None:
    """The kernel, if it can take these tensors (CPU, one fp32/bf16 dtype), else None."""
    first = tensors[0]
    assert first is not None
    if first.device.type != "cpu" or first.dtype not in DTYPES or not enabled():
        return None
    if any(t is not None and (t.dtype != first.dtype or t.device != first.device) for t in tensors):
        return None
    return kernel()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: normalise in fp32, cast back, then scale."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """RMSNorm(residual + x) * weight; `residual` becomes residual + x in place (None: no
    add). `x` must be a temporary: the kernel writes the result into it."""
    lib = _kernel_for(x, residual, weight)
    contiguous = x.is_contiguous() and (residual is None or residual.is_contiguous())
    if lib is None or not contiguous or x.shape[-1] != weight.numel():
        if residual is not None:
            residual.add_(x)
            x = residual
        return rms_norm_reference(x, weight, eps)
    rows, dim = x.numel() // x.shape[-1], x.shape[-1]
    lib.rlserve_add_rms_norm(
        DTYPES[x.dtype], x.data_ptr(), _ptr(residual), weight.data_ptr(), rows, dim, eps, LANES
    )
    return x


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) * weight into a new tensor (`x` is left as it is)."""
    if _kernel_for(x, weight) is None:
        return rms_norm_reference(x, weight, eps)
    return add_rms_norm(x.clone(memory_format=torch.contiguous_format), None, weight, eps)


def qk_norm_rope(
    qkv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    norms: tuple[torch.Tensor, torch.Tensor, float] | None,
    angles: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [T, heads, head_dim] views of `qkv` [T, (heads + 2 kv_heads) head_dim], with
    q and k normalised per head (`norms` = q weight, k weight, eps; None: no q/k norm) and
    rotated by `angles` (cos, sin [T, head_dim] in qkv's dtype). q and k are rewritten in
    place in the kernel path, so `qkv` must be a temporary."""
    tokens, q_size, kv_size = qkv.shape[0], num_heads * head_dim, num_kv_heads * head_dim
    cos, sin = angles
    q_w, k_w, eps = norms if norms is not None else (None, None, 0.0)
    lib = _kernel_for(qkv, cos, sin, q_w, k_w)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(tokens, num_heads, head_dim)
    k = k.view(tokens, num_kv_heads, head_dim)
    v = v.view(tokens, num_kv_heads, head_dim)
    if lib is None or qkv.stride(-1) != 1 or not (cos.is_contiguous() and sin.is_contiguous()):
        if q_w is not None and k_w is not None:
            q, k = rms_norm_reference(q, q_w, eps), rms_norm_reference(k, k_w, eps)
        return (*apply_rope_reference(q, k, cos, sin), v)
    lib.rlserve_qk_norm_rope(
        DTYPES[qkv.dtype],
        qkv.data_ptr(),
        tokens,
        qkv.stride(0),
        num_heads,
        num_kv_heads,
        head_dim,
        _ptr(q_w),
        _ptr(k_w),
        cos.data_ptr(),
        sin.data_ptr(),
        eps,
        LANES,
    )
    return q, k, v


def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' rotary embedding; cos/sin [T, head_dim] broadcast over heads."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of a [T, 2 * inter] gate/up output, one temporary fewer than
    `F.silu(gate) * up` (the product is written into silu's output)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)
