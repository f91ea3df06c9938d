"""Throughput: rlserve vs transformers `generate`, and batch-1 decode vs the bandwidth limit.

Runs on a random-weight checkpoint with Qwen3-0.6B's real shapes (fp32), in one process:
  M  64 requests, prompts 32-512 tokens, outputs 16-256 tokens, ignore_eos
     (transformers: padded batches of the same requests, the best batch size tried)
  G  a GRPO batch: 8 prompts x n=8 samples, prompt 256, output 128
  B1 batch-1 decode ms/step against weight bytes read per step / measured copy bandwidth
     (the issue's limit) and / measured read bandwidth (stricter: a copy also writes)
Usage: python bench/throughput.py [--quick] [--threads 2] [--hf-batch-sizes 8,16]
       python bench/throughput.py --device cuda --dtype bfloat16   (logits stay fp32)
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from dataclasses import dataclass

import torch
from checkpoint import qwen3_0_6b_checkpoint

from rlserve import Engine, SamplingParams

TEMPERATURE = 0.8


@dataclass
class Workload:
    num_requests: int
    prompt_lens: tuple[int, int]
    output_lens: tuple[int, int]
    group_prompts: int
    group_n: int
    group_prompt_len: int
    group_output_len: int
    b1_steps: int


FULL = Workload(64, (32, 512), (16, 256), 8, 8, 256, 128, 64)
QUICK = Workload(12, (32, 128), (16, 48), 2, 4, 64, 16, 16)


def make_requests(w: Workload, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(0)
    return [
        (
            [rng.randrange(vocab) for _ in range(rng.randint(*w.prompt_lens))],
            rng.randint(*w.output_lens),
        )
        for _ in range(w.num_requests)
    ]


def bandwidths(device: str, num_bytes: int = 1 << 30) -> tuple[float, float]:
    """Bytes per second of a large tensor copy (memcpy) and of a pure read (a sum), best of 5.
    A copy also writes what it reads, so the read rate is the stricter limit for decode."""
    src = torch.ones(num_bytes // 4, device=device)
    dst = torch.empty_like(src)

    def timed(fn) -> float:
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t

    best_copy = min(timed(lambda: dst.copy_(src)) for _ in range(5))
    best_read = min(timed(src.sum) for _ in range(5))
    return num_bytes / best_copy, num_bytes / best_read


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_rlserve_m(engine: Engine, requests) -> float:
    params = [
        SamplingParams(temperature=TEMPERATURE, max_tokens=n, ignore_eos=True, seed=i)
        for i, (_, n) in enumerate(requests)
    ]
    engine.reset_prefix_cache()
    t = time.perf_counter()
    outs = engine.generate([p for p, _ in requests], params)
    elapsed = time.perf_counter() - t
    produced = sum(len(c.token_ids) for o in outs for c in o.outputs)
    assert produced == sum(n for _, n in requests)
    return produced / elapsed


def run_hf_m(model, requests, batch_size: int) -> float:
    """transformers generate over left-padded batches; counts only the requested tokens."""
    device = model.device
    t = time.perf_counter()
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        width = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (p, _) in enumerate(batch):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        new = max(n for _, n in batch)
        with torch.no_grad():
            model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=True,
                temperature=TEMPERATURE,
                top_k=0,
                top_p=1.0,
                eos_token_id=None,
                pad_token_id=0,
            )
    return sum(n for _, n in requests) / (time.perf_counter() - t)


def run_group(engine: Engine, w: Workload, vocab: int) -> tuple[float, int]:
    rng = random.Random(1)
    prompts = [
        [rng.randrange(vocab) for _ in range(w.group_prompt_len)] for _ in range(w.group_prompts)
    ]
    params = SamplingParams(
        n=w.group_n, temperature=TEMPERATURE, ignore_eos=True, max_tokens=w.group_output_len, seed=3
    )
    engine.reset_prefix_cache()
    before = engine.stats()["prompt_tokens_computed"]
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - t
    produced = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return produced / elapsed, engine.stats()["prompt_tokens_computed"] - before


def run_batch1_decode(engine: Engine, steps: int) -> float:
    engine.add_request(
        list(range(1000, 1032)),
        SamplingParams(temperature=TEMPERATURE, max_tokens=steps + 1, ignore_eos=True, seed=0),
    )
    engine.step()  # prefill
    times = []
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]  # median: robust to a stray hiccup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small version (~1-2 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hf-batch-sizes", default=None, help="comma-separated, e.g. 8,16")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="weights and KV cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    w = QUICK if args.quick else FULL
    sizes = [int(s) for s in (args.hf_batch_sizes or ("4,12" if args.quick else "16")).split(",")]
    path = qwen3_0_6b_checkpoint()
    engine = Engine(
        path,
        kv_cache_memory=(2 if args.quick else 8) * 1024**3,
        max_model_len=1024,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        device=args.device,
        dtype=args.dtype,
    )
    vocab = engine.model.config.vocab_size
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    requests = make_requests(w, vocab)
    where = args.device if args.device != "cpu" else f"cpu, {args.threads} threads"
    print(
        f"{'quick' if args.quick else 'full'} run, {args.dtype} ({where}), "
        f"weights {weight_bytes / 1e9:.2f} GB",
        flush=True,
    )

    copy_bw, read_bw = bandwidths(args.device)
    b1 = run_batch1_decode(engine, w.b1_steps)
    copy_limit, read_limit = weight_bytes / copy_bw, weight_bytes / read_bw
    print(
        f"B1: {b1 * 1e3:.1f} ms/step; copy {copy_bw / 1e9:.1f} GB/s -> limit "
        f"{copy_limit * 1e3:.1f} ms; read {read_bw / 1e9:.1f} GB/s -> {read_limit * 1e3:.1f} ms",
        flush=True,
    )
    ours_m = run_rlserve_m(engine, requests)
    print(f"M: rlserve {ours_m:.1f} tok/s", flush=True)
    ours_g, group_prompt_computed = run_group(engine, w, vocab)
    print(
        f"G: rlserve {ours_g:.1f} tok/s, {group_prompt_computed} prompt tokens computed", flush=True
    )
    del engine
    gc.collect()

    hf_results = {}
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype))
        model = model.to(args.device).eval()
        for bs in sizes:
            hf_results[bs] = run_hf_m(model, requests, bs)
            print(f"M: transformers generate, batch {bs}: {hf_results[bs]:.1f} tok/s", flush=True)
    best_bs = max(hf_results, key=hf_results.get) if hf_results else None

    print("\n| measure | rlserve | peer | ratio |\n|---|---|---|---|")
    if best_bs is not None:
        tried = ", ".join(f"bs{bs}: {v:.1f}" for bs, v in hf_results.items())
        print(
            f"| M: output tok/s ({w.num_requests} requests) | {ours_m:.1f} | "
            f"{hf_results[best_bs]:.1f} (HF generate, {tried}) | "
            f"{ours_m / hf_results[best_bs]:.2f}x |"
        )
    else:
        print(f"| M: output tok/s ({w.num_requests} requests) | {ours_m:.1f} | - | - |")
    ideal = w.group_prompts * w.group_prompt_len
    print(f"| G: output tok/s ({w.group_prompts} prompts x n={w.group_n}) | {ours_g:.1f} | - | - |")
    print(
        f"| G: prompt tokens computed | {group_prompt_computed} | {ideal} (one prefill per "
        f"group; {ideal * w.group_n} without sharing) | {group_prompt_computed / ideal:.2f} |"
    )
    print(
        f"| B1: decode ms/step | {b1 * 1e3:.1f} | {copy_limit * 1e3:.1f} (weights / copy "
        f"bandwidth {copy_bw / 1e9:.1f} GB/s) | {copy_limit / b1:.0%} of limit |"
    )
    print(
        f"| B1: decode ms/step | {b1 * 1e3:.1f} | {read_limit * 1e3:.1f} (weights / read "
        f"bandwidth {read_bw / 1e9:.1f} GB/s) | {read_limit / b1:.0%} of limit |"
    )


if __name__ == "__main__":
    main()
