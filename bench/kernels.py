"""The two CPU kernels choices behind rlserve's speed, each against its obvious peer.

1. Linear: rlserve's `linear` (oneDNN) vs `torch.nn.functional.linear` (MKL sgemm), fp32, on
   48 weights of Qwen3-0.6B's gate/up shape (1.2 GB, so nothing stays in cache), by batch size.
2. Decode attention: rlserve's runner (decode groups capped at 2 MiB of gathered K) vs one
   SDPA call over all sequences' gathered pages, for B sequences of `ctx` tokens.
3. Paged decode attention: the in-place kernel (models/paged_kernel.py) vs gather + SDPA
   (`RLSERVE_PAGED_KERNEL=0`), per layer call, Qwen3-0.6B's attention shape, interleaved, next
   to the read roof (summing the same K/V bytes); then end-to-end decode tok/s on the bundled
   model and checkpoint.py's ~48M-parameter Qwen3 shape, kernel on and off, interleaved.
Usage: python bench/kernels.py [--threads 2] [--sections linear,attention,paged]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from checkpoint import qwen3_small_checkpoint

from rlserve import Engine, SamplingParams
from rlserve.engine.model_runner import CPU_MAX_GROUP_KV_BYTES, decode_groups
from rlserve.models.attention import AttentionMetadata, paged_attention
from rlserve.models.linear import linear

HIDDEN, INTER, LAYERS = 1024, 6144, 48
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 16, 8, 128, 16
CPU = torch.device("cpu")


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
    os.environ["RLSERVE_PAGED_KERNEL"] = "0"  # this table is about grouping the SDPA path
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


def _with_kernel(on: bool, fn):
    os.environ["RLSERVE_PAGED_KERNEL"] = "1" if on else "0"
    return fn()


def paged_attention_table() -> None:
    page_bytes = BLOCK * KV_HEADS * HEAD_DIM * 4
    print(
        "\n| B x ctx | gather + SDPA (ms) | paged kernel (ms) | speed-up | kernel GB/s | "
        "read roof GB/s |\n|---|---|---|---|---|---|"
    )
    for batch in (1, 16, 64):
        for ctx in (128, 512, 1024):
            pages = -(-ctx // BLOCK)
            num_blocks = batch * pages + 1
            k_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM)
            v_cache = torch.randn_like(k_cache)
            tables = torch.randperm(num_blocks)[: batch * pages].view(batch, pages).tolist()
            decodes = [(row, tables[row], ctx) for row in range(batch)]
            groups = decode_groups(decodes, BLOCK, CPU_MAX_GROUP_KV_BYTES // page_bytes, CPU)
            slots = torch.tensor([t[-1] * BLOCK for t in tables])
            meta = AttentionMetadata(slot_mapping=slots, prefills=[], decodes=groups)
            q, kv = torch.randn(batch, HEADS, HEAD_DIM), torch.randn(batch, KV_HEADS, HEAD_DIM)

            def step(meta=meta, q=q, kv=kv, k_cache=k_cache, v_cache=v_cache):
                return paged_attention(q, kv, kv, k_cache, v_cache, meta, HEAD_DIM**-0.5)

            times: dict[bool, float] = {True: float("inf"), False: float("inf")}
            for on in (False, True, False, True):  # interleaved: the load drifts
                times[on] = min(times[on], _with_kernel(on, lambda step=step: seconds(step)))
            read = 2 * batch * ctx * KV_HEADS * HEAD_DIM * 4
            roof = seconds(lambda k=k_cache, v=v_cache: (k.sum(), v.sum()))
            print(
                f"| {batch} x {ctx} | {times[False] * 1e3:.2f} | {times[True] * 1e3:.2f} | "
                f"{times[False] / times[True]:.1f}x | {read / times[True] / 1e9:.1f} | "
                f"{2 * k_cache.numel() * 4 / roof / 1e9:.1f} |"
            )


def decode_tok_s(engine: Engine, batch: int, prompt_len: int, steps: int) -> float:
    """Tokens per second of the steps in which all `batch` sequences decode."""
    params = SamplingParams(temperature=0.8, max_tokens=steps, ignore_eos=True, seed=0)
    for i in range(batch):
        engine.add_request([(7 * i + j) % 600 + 1 for j in range(prompt_len)], params)
    decode_time = 0.0
    while engine.has_unfinished_requests():
        running = engine.scheduler.running
        decoding = not engine.scheduler.waiting and len(running) == batch
        decoding = decoding and all(s.num_computed_tokens >= s.num_prompt_tokens for s in running)
        start = time.perf_counter()
        engine.step()
        if decoding:
            decode_time += time.perf_counter() - start
    return batch * (steps - 1) / decode_time


def paged_decode_table() -> None:
    print(
        "\n| model | B x prompt | decode tok/s, gather + SDPA | paged kernel | speed-up |"
        "\n|---|---|---|---|---|"
    )
    for name, path in (("bundled", None), ("qwen3-small (~48M)", qwen3_small_checkpoint())):
        engine = Engine(path, max_model_len=2048, max_num_seqs=64, enable_prefix_caching=False)
        for batch, prompt_len in ((1, 512), (16, 256), (64, 128)):
            rates: dict[bool, float] = {True: 0.0, False: 0.0}
            for on in (False, True, False, True):
                run = lambda e=engine, b=batch, p=prompt_len: decode_tok_s(e, b, p, 32)  # noqa: E731
                rates[on] = max(rates[on], _with_kernel(on, run))
            print(
                f"| {name} | {batch} x {prompt_len} | {rates[False]:.0f} | {rates[True]:.0f} | "
                f"{rates[True] / rates[False]:.2f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sections", default="linear,attention,paged")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    print(f"fp32, {args.threads} threads, load {os.getloadavg()[0]:.1f}\n")
    if "linear" in sections:
        linear_table()
    if "attention" in sections:
        attention_table()
    if "paged" in sections:
        paged_attention_table()
        paged_decode_table()


if __name__ == "__main__":
    main()
