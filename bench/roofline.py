"""The machine's roofs (peak GEMM rate, memory bandwidth), measured in the run, and the useful
work of a workload (FLOPs, bytes moved), so each throughput figure gets its share of a roof.

Useful FLOPs: 2 x (linear parameters) per token through the layers, 2 x vocab x hidden per
token that needs logits, and attention's 4 x heads x head_dim x context per token per layer
(QK^T and PV). Bytes: the weights read once per engine step, every token's K/V written once,
and each token's context K/V read once per query step. Padding, recomputation and extra
steps are not useful work: a runtime that does them gets a lower share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlserve.models.linear import linear

GEMM_SHAPE = (512, 4096, 4096)  # tokens, in, out: large enough for the peak, ~0.1 s in fp32


@dataclass(frozen=True)
class Roofs:
    """What the machine can do, measured now: FLOP/s of a large GEMM, bytes/s."""

    peak_flops: float
    read_bw: float
    copy_bw: float


@dataclass(frozen=True)
class Work:
    """The useful work of one workload."""

    flops: float
    bytes: float


@dataclass(frozen=True)
class Shape:
    """What the cost model needs of a model."""

    layer_params: int  # weights of the linear layers (the embedding excluded)
    head_params: int  # vocab x hidden (tied or not)
    weight_bytes: int  # read every step
    kv_bytes_per_token: int
    attn_width: int  # layers x heads x head_dim

    @classmethod
    def of(cls, model) -> Shape:
        c = model.config
        layer_weights = [p for p in model.layers.parameters() if p.dim() == 2]
        head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        small = [p for p in model.parameters() if p.dim() < 2]
        read = layer_weights + [head] + small
        itemsize = model.embed_tokens.weight.element_size()
        return cls(
            layer_params=sum(p.numel() for p in layer_weights),
            head_params=head.numel(),
            weight_bytes=sum(p.numel() * p.element_size() for p in read),
            kv_bytes_per_token=2 * c.num_layers * c.num_kv_heads * c.head_dim * itemsize,
            attn_width=c.num_layers * c.num_heads * c.head_dim,
        )


def measure_roofs(device: str, dtypes: list[torch.dtype]) -> dict[torch.dtype, Roofs]:
    """The roofs for each dtype: its own peak GEMM rate, one bandwidth measure for all."""
    copy_bw, read_bw = bandwidths(device)
    return {d: Roofs(peak_gemm_flops(device, d), read_bw, copy_bw) for d in dtypes}


def peak_gemm_flops(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of the faster of F.linear and rlserve's `linear` on a large GEMM, best of 3."""
    tokens, d_in, d_out = GEMM_SHAPE
    x = torch.randn(tokens, d_in, device=device).to(dtype)
    w = torch.randn(d_out, d_in, device=device).to(dtype)
    best = min(_best_time(lambda fn=fn: fn(x, w), device, repeats=3) for fn in (F.linear, linear))
    return 2 * tokens * d_in * d_out / best


def bandwidths(device: str, num_bytes: int = 1 << 30) -> tuple[float, float]:
    """Bytes per second of a large tensor copy (memcpy) and of a pure read (a sum), best of 5.
    A copy also writes what it reads, so the read rate is the stricter limit for decode."""
    src = torch.ones(num_bytes // 4, device=device)
    dst = torch.empty_like(src)
    best_copy = _best_time(lambda: dst.copy_(src), device, repeats=5)
    best_read = _best_time(src.sum, device, repeats=5)
    return num_bytes / best_copy, num_bytes / best_read


def _best_time(fn: Callable[[], object], device: str, repeats: int) -> float:
    fn()  # warm-up: kernel selection, first-touch pages
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generation_work(shape: Shape, requests: list[tuple[int, int]], steps: int) -> Work:
    """Useful work of generating `requests` ((prompt length, output length) pairs) in
    `steps` engine steps (each reads every weight once)."""
    flops = 0.0
    kv_read_tokens = 0
    for prompt_len, output_len in requests:
        processed = prompt_len + output_len - 1  # the last token is sampled, never fed
        contexts = processed * (processed + 1) // 2  # token t attends to t + 1 positions
        flops += 2 * shape.layer_params * processed + 2 * shape.head_params * output_len
        flops += 4 * shape.attn_width * contexts
        kv_read_tokens += prompt_len + sum(range(prompt_len + 1, processed + 1))
    written = sum(p + n - 1 for p, n in requests)
    kv_bytes = shape.kv_bytes_per_token * (written + kv_read_tokens)
    return Work(flops, shape.weight_bytes * steps + kv_bytes)


def decode_step_bytes(shape: Shape, context: int) -> int:
    """Bytes one batch-1 decode step must read at `context` tokens: weights and the KV."""
    return shape.weight_bytes + shape.kv_bytes_per_token * context


def shares(work: Work, seconds: float, roofs: Roofs) -> tuple[float, float]:
    """(share of the compute roof, share of the read-bandwidth roof) at `seconds`."""
    return work.flops / seconds / roofs.peak_flops, work.bytes / seconds / roofs.read_bw
