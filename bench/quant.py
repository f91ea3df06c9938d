"""int8 weight-only quantisation against fp32 rlserve, all in one run.

1. Kernel: GFLOP/s of rlserve's int8 kernel vs fp32 (oneDNN, rlserve's `linear`), bf16
   `F.linear` and torch's `_weight_int8pack_mm`, on a stack of weights too big for cache.
2. Engine, for the bundled model and the random Qwen3-0.6B shape: decode tok/s at batch 1
   and 16 (median step, fp32 and int8 measured interleaved), logprob drift of int8 on fp32's
   greedy tokens (max / mean |dlogprob|, teacher-forced argmax agreement, identical greedy
   completions), and the cost of one full `update_weights` (int8 re-quantises).
Usage: python bench/quant.py [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from checkpoint import qwen3_0_6b_checkpoint  # noqa: E402

from rlserve import Engine, SamplingParams  # noqa: E402
from rlserve.models.int8_build import KERNEL_ERROR, int8_kernel  # noqa: E402
from rlserve.models.int8_matmul import int8_linear  # noqa: E402
from rlserve.models.linear import linear  # noqa: E402
from rlserve.models.loader import iter_safetensors  # noqa: E402
from rlserve.models.quant import quantize_per_channel  # noqa: E402


def seconds(fn, repeats: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def pack_mm(x: torch.Tensor, weights: list) -> list[torch.Tensor]:
    return [torch._weight_int8pack_mm(x, q, s) for q, s in weights]


def kernel_table(quick: bool) -> None:
    print(f"int8 kernel: {'loaded' if int8_kernel() else 'unavailable: ' + str(KERNEL_ERROR)}")
    print(
        "| weight x count | batch | fp32 oneDNN | bf16 F.linear | int8pack_mm | rlserve int8 "
        "| int8 / fp32 | int8 / bf16 |\n|---|---|---|---|---|---|---|---|"
    )
    for n, k, count in ((1024, 1024, 160), (4096, 1024, 48)):
        count //= 4 if quick else 1
        fp32 = [torch.randn(n, k) * 0.02 for _ in range(count)]
        bf16 = [w.bfloat16() for w in fp32]
        int8 = [quantize_per_channel(w) for w in fp32]
        for m in (1, 4, 16, 64):
            x = torch.randn(m, k)
            xb = x.bfloat16()
            flops = 2 * m * n * k * count / 1e9
            t32 = seconds(lambda x=x, ws=fp32: [linear(x, w) for w in ws])
            tbf = seconds(lambda x=xb, ws=bf16: [F.linear(x, w) for w in ws])
            t8 = seconds(lambda x=x, ws=int8: [int8_linear(x, q, s) for q, s in ws])
            tpk = seconds(lambda x=x, ws=int8: pack_mm(x, ws), 1) if m == 1 else float("nan")
            print(
                f"| {n}x{k} x{count} | {m} | {flops / t32:.1f} | {flops / tbf:.1f} | "
                f"{flops / tpk:.1f} | {flops / t8:.1f} | {t32 / t8:.2f}x | {tbf / t8:.2f}x |"
            )


def decode_step_seconds(engine: Engine, batch: int, steps: int) -> list[float]:
    vocab = engine.model.config.vocab_size
    for b in range(batch):
        prompt = [(1000 + 7 * b + t) % vocab for t in range(16)]
        params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
        engine.add_request(prompt, params)
    engine.step()  # the prefill
    times = []
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return times


def decode_rates(engines: dict[str, Engine], batch: int, steps: int, rounds: int) -> dict:
    """tok/s from the median step of each engine, rounds interleaved so load hits both."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            engine.reset_prefix_cache()
            times[name] += decode_step_seconds(engine, batch, steps)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def drift(fp32: Engine, int8: Engine, prompts: list[list[int]], tokens: int) -> str:
    greedy = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    ref = [o.outputs[0].token_ids for o in fp32.generate(prompts, greedy)]
    ours = [o.outputs[0].token_ids for o in int8.generate(prompts, greedy)]
    identical = sum(a == b for a, b in zip(ref, ours, strict=True))
    a, b = fp32.score(prompts, ref), int8.score(prompts, ref)
    d = torch.tensor(a).sub(torch.tensor(b)).abs().flatten()
    agree = []
    for prompt, response in zip(prompts, ref, strict=True):
        la, lb = fp32.logits(prompt + response), int8.logits(prompt + response)
        agree.append((la.argmax(-1) == lb.argmax(-1)).float().mean().item())
    return (
        f"max |dlogprob| {d.max():.4f}, mean {d.mean():.5f} over {len(d)} tokens; "
        f"teacher-forced argmax agreement {statistics.mean(agree):.1%}; "
        f"identical greedy completions {identical}/{len(prompts)}"
    )


def update_seconds(engine: Engine, weights: dict[str, torch.Tensor]) -> float:
    t = time.perf_counter()
    engine.update_weights(weights)
    return time.perf_counter() - t


def engine_report(name: str, path, args) -> None:
    kwargs = dict(max_model_len=512, max_num_seqs=16, kv_cache_memory=256 * 1024**2)
    engines = {
        "fp32": Engine(path, **kwargs),
        "int8": Engine(path, quantization="int8", **kwargs),
    }
    vocab = engines["fp32"].model.config.vocab_size
    steps, rounds = (8, 2) if args.quick else (24, 3)
    print(f"\n## {name}")
    for batch in (1, 16):
        rates = decode_rates(engines, batch, steps, rounds)
        print(
            f"decode batch {batch}: fp32 {rates['fp32']:.1f} tok/s, int8 {rates['int8']:.1f} "
            f"tok/s: int8 / fp32 = {rates['int8'] / rates['fp32']:.2f}x"
        )
    prompts = [[(31 * i + 7 * t) % vocab for t in range(12)] for i in range(8)]
    print("drift int8 vs fp32:", drift(engines["fp32"], engines["int8"], prompts, 32))
    weights = dict(iter_safetensors(path or engines["fp32"].model_path))
    update = {k: update_seconds(e, weights) for k, e in engines.items()}
    extra = update["int8"] - update["fp32"]
    print(
        f"update_weights (all {len(weights)} tensors, from memory): fp32 {update['fp32']:.3f} s,"
        f" int8 {update['int8']:.3f} s (re-quantising costs {extra:.3f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer weights, steps and rounds")
    parser.add_argument("--skip-0.6b", dest="skip_big", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; load average {os.getloadavg()}")
    kernel_table(args.quick)
    engine_report("bundled model", None, args)
    if not args.skip_big:
        engine_report("random Qwen3-0.6B shape", qwen3_0_6b_checkpoint(), args)
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
