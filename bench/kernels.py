"""The two CPU kernels choices behind rlserve's speed, each against its obvious peer.

1. Linear: rlserve's `linear` (oneDNN) vs `torch.nn.functional.linear` (MKL sgemm), fp32, on
   48 weights of Qwen3-0.6B's gate/up shape (1.2 GB, so nothing stays in cache), by batch size.
2. Decode attention: rlserve's runner (decode groups capped at 2 MiB of gathered K) vs one
   SDPA call over all sequences' gathered pages, for B sequences of `ctx` tokens.
Usage: python bench/kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rlserve.engine.model_runner import CPU_MAX_GROUP_KV_BYTES, decode_groups
from rlserve.models.attention import AttentionMetadata, paged_attention
from rlserve.models.linear import linear

HIDDEN, INTER, LAYERS = 1024, 6144, 48
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 16, 8, 128, 16


def seconds(fn, repeats: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def linear_table() -> None:
    weights = [torch.randn(INTER, HIDDEN) for _ in range(LAYERS)]
    nbytes = sum(w.numel() * 4 for w in weights)
    print("| batch | F.linear (MKL) GFLOP/s | rlserve linear (oneDNN) GFLOP/s | speed-up |")
    print("|---|---|---|---|")
    for m in (1, 2, 4, 8, 16, 32, 64, 128, 512):
        x = torch.randn(m, HIDDEN)
        flops = 2 * m * nbytes / 4
        mkl = seconds(lambda x=x: [F.linear(x, w) for w in weights])
        ours = seconds(lambda x=x: [linear(x, w) for w in weights])
        note = f" ({nbytes / ours / 1e9:.1f} vs {nbytes / mkl / 1e9:.1f} GB/s)" if m == 1 else ""
        print(
            f"| {m} | {flops / mkl / 1e9:.0f} | {flops / ours / 1e9:.0f}{note} | "
            f"{mkl / ours:.2f}x |"
        )


def attention_table() -> None:
    num_blocks = 2400
    k_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM)
    v_cache = torch.randn_like(k_cache)
    page_bytes = BLOCK * KV_HEADS * HEAD_DIM * 4
    print(
        "\n| sequences x context | one gathered SDPA (ms) | rlserve decode groups (ms) | "
        "speed-up |\n|---|---|---|---|"
    )
    for batch, ctx in ((8, 400), (32, 100), (32, 400), (64, 400), (16, 1000)):
        pages = -(-ctx // BLOCK)
        tables = torch.randperm(num_blocks)[: batch * pages].view(batch, pages).tolist()
        decodes = [(row, tables[row], ctx) for row in range(batch)]
        q = torch.randn(batch, HEADS, HEAD_DIM)
        kv = torch.randn(batch, KV_HEADS, HEAD_DIM)
        timings = []
        slots = torch.tensor([t[-1] * BLOCK for t in tables])
        for cap in (None, CPU_MAX_GROUP_KV_BYTES // page_bytes):
            groups = decode_groups(decodes, BLOCK, cap, torch.device("cpu"))
            meta = AttentionMetadata(slot_mapping=slots, prefills=[], decodes=groups)
            timings.append(
                seconds(
                    lambda m=meta, q=q, kv=kv: paged_attention(
                        q, kv, kv, k_cache, v_cache, m, HEAD_DIM**-0.5
                    )
                )
            )
        print(
            f"| {batch} x {ctx} | {timings[0] * 1e3:.1f} | {timings[1] * 1e3:.1f} | "
            f"{timings[0] / timings[1]:.1f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fp32, {args.threads} threads\n")
    linear_table()
    attention_table()


if __name__ == "__main__":
    main()
