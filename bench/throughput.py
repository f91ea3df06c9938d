"""Throughput against transformers `generate` and against the machine's roofs, all in one run.

Models (random weights where named so, built on the fly): the bundled model (`bundled`), a
~50M-parameter Qwen3 shape (`small`), Qwen3-0.6B's real shapes (`0.6b`). For each model
and dtype:
  M  mixed: 64 requests, prompts 32-512 tokens, outputs 16-256 tokens, ignore_eos
     (transformers: padded batches of the same requests, the best batch size tried)
  G  a GRPO batch: 8 prompts x n=8 samples, prompt 256, output 128
  B1 batch-1 decode ms/step against the bytes one step reads / measured read bandwidth
Each figure also gets its share of the compute roof (useful FLOPs / time / peak GEMM FLOP/s,
the peak measured in the run's dtype) and of the read roof (bytes moved / time / read
bandwidth): see roofline.py for what counts.
Usage: python bench/throughput.py [--quick] [--models bundled,small,0.6b]
         [--dtype float32,bfloat16] [--threads 2] [--hf-batch-sizes 8,16] [--skip-hf]
       python bench/throughput.py --device cuda --dtype bfloat16   (logits stay fp32)
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from dataclasses import dataclass

import torch
from checkpoint import qwen3_0_6b_checkpoint, qwen3_small_checkpoint
from hf_peer import TEMPERATURE, load_hf, run_hf_m
from roofline import (  # noqa: F401  (bandwidths: imported from here by older scripts)
    Roofs,
    Shape,
    Work,
    bandwidths,
    decode_step_bytes,
    generation_work,
    measure_roofs,
    shares,
)

from rlserve import Engine, SamplingParams
from rlserve.config import BUNDLED_MODEL, auto_dtype

MODELS = {
    "bundled": lambda: BUNDLED_MODEL,
    "small": qwen3_small_checkpoint,
    "0.6b": qwen3_0_6b_checkpoint,
}


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
B1_PROMPT = 32


@dataclass
class Result:
    """One model in one dtype: tokens/s, and shares of the roofs."""

    m: float
    m_shares: tuple[float, float]
    g: float
    g_shares: tuple[float, float]
    g_prompt_computed: int
    b1: float
    b1_limit: float
    hf: dict[int, float]
    hf_shares: tuple[float, float] | None


def make_requests(w: Workload, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(0)
    return [
        (
            [rng.randrange(vocab) for _ in range(rng.randint(*w.prompt_lens))],
            rng.randint(*w.output_lens),
        )
        for _ in range(w.num_requests)
    ]


def timed_generate(engine: Engine, prompts, params) -> tuple[list, float, int]:
    """(outputs, seconds, engine steps) of one `generate` call on a cold prefix cache."""
    engine.reset_prefix_cache()
    steps = engine.stats()["steps"]
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    return outs, time.perf_counter() - t, engine.stats()["steps"] - steps


def run_rlserve_m(engine: Engine, requests, shape: Shape, roofs: Roofs):
    params = [
        SamplingParams(temperature=TEMPERATURE, max_tokens=n, ignore_eos=True, seed=i)
        for i, (_, n) in enumerate(requests)
    ]
    outs, seconds, steps = timed_generate(engine, [p for p, _ in requests], params)
    produced = sum(len(c.token_ids) for o in outs for c in o.outputs)
    assert produced == sum(n for _, n in requests)
    work = generation_work(shape, [(len(p), n) for p, n in requests], steps)
    return produced / seconds, shares(work, seconds, roofs)


def run_group(engine: Engine, w: Workload, vocab: int, shape: Shape, roofs: Roofs):
    rng = random.Random(1)
    prompts = [
        [rng.randrange(vocab) for _ in range(w.group_prompt_len)] for _ in range(w.group_prompts)
    ]
    params = SamplingParams(
        n=w.group_n, temperature=TEMPERATURE, ignore_eos=True, max_tokens=w.group_output_len, seed=3
    )
    before = engine.stats()["prompt_tokens_computed"]
    outs, seconds, steps = timed_generate(engine, prompts, params)
    produced = sum(len(c.token_ids) for o in outs for c in o.outputs)
    # Useful work: one prefill per prompt, then n continuations that share it.
    useful = [(w.group_prompt_len, w.group_output_len)] * w.group_prompts
    useful += [(1, w.group_output_len)] * (w.group_prompts * (w.group_n - 1))
    work = generation_work(shape, useful, steps)
    computed = engine.stats()["prompt_tokens_computed"] - before
    return produced / seconds, shares(work, seconds, roofs), computed


def run_batch1_decode(engine: Engine, steps: int) -> float:
    vocab = engine.model.config.vocab_size
    engine.add_request(
        [t % vocab for t in range(1000, 1000 + B1_PROMPT)],
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


def run_model(path, dtype: str, args, w: Workload, roofs: Roofs) -> Result:
    engine = Engine(
        path,
        kv_cache_memory=(2 if args.quick else 8) * 1024**3,
        max_model_len=1024,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        device=args.device,
        dtype=dtype,
    )
    shape, vocab = Shape.of(engine.model), engine.model.config.vocab_size
    requests = make_requests(w, vocab)
    b1 = run_batch1_decode(engine, w.b1_steps)
    b1_limit = decode_step_bytes(shape, B1_PROMPT + w.b1_steps // 2) / roofs.read_bw
    m, m_shares = run_rlserve_m(engine, requests, shape, roofs)
    g, g_shares, computed = run_group(engine, w, vocab, shape, roofs)
    print(f"  B1 {b1 * 1e3:.1f} ms/step; M {m:.1f} tok/s; G {g:.1f} tok/s", flush=True)
    del engine
    gc.collect()
    hf: dict[int, float] = {}
    hf_shares = None
    if not args.skip_hf:
        model = load_hf(path, getattr(torch, dtype), args.device)
        steps = {}
        for bs in args.sizes:
            hf[bs], steps[bs] = run_hf_m(model, requests, bs)
            print(f"  M: transformers generate, batch {bs}: {hf[bs]:.1f} tok/s", flush=True)
        best = max(hf, key=hf.get)
        work = generation_work(shape, [(len(p), n) for p, n in requests], steps[best])
        hf_shares = shares(work, sum(n for _, n in requests) / hf[best], roofs)
        del model
        gc.collect()
    return Result(m, m_shares, g, g_shares, computed, b1, b1_limit, hf, hf_shares)


def pct(pair: tuple[float, float] | None) -> str:
    return "- | -" if pair is None else f"{pair[0]:.0%} | {pair[1]:.0%}"


def print_table(results: dict[tuple[str, str], Result], w: Workload, roofs: dict) -> None:
    print(
        "\n| model | dtype | measure | rlserve | peer | ratio | rlserve % compute roof | "
        "rlserve % read roof | peer % compute roof | peer % read roof |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, dtype), r in results.items():
        head = f"| {name} | {dtype} |"
        if r.hf:
            best = max(r.hf, key=r.hf.get)
            tried = ", ".join(f"bs{bs}: {v:.1f}" for bs, v in r.hf.items())
            peer, ratio = f"{r.hf[best]:.1f} (HF generate, {tried})", f"{r.m / r.hf[best]:.2f}x"
        else:
            peer, ratio = "-", "-"
        print(
            f"{head} M: output tok/s ({w.num_requests} requests) | {r.m:.1f} | {peer} | {ratio} "
            f"| {pct(r.m_shares)} | {pct(r.hf_shares)} |"
        )
        ideal = w.group_prompts * w.group_prompt_len
        print(
            f"{head} G: output tok/s ({w.group_prompts} prompts x n={w.group_n}; prompt tokens "
            f"computed {r.g_prompt_computed}, ideal {ideal}) | {r.g:.1f} | - | - | "
            f"{pct(r.g_shares)} | - | - |"
        )
        print(
            f"{head} B1: decode ms/step | {r.b1 * 1e3:.2f} | {r.b1_limit * 1e3:.2f} (bytes read "
            f"/ read bandwidth) | {r.b1_limit / r.b1:.0%} of the read roof | - | - | - | - |"
        )
    print()
    for dtype, roof in roofs.items():
        print(
            f"roofs, {dtype}: peak GEMM {roof.peak_flops / 1e9:.0f} GFLOP/s; read "
            f"{roof.read_bw / 1e9:.1f} GB/s; copy {roof.copy_bw / 1e9:.1f} GB/s"
        )
    print_dtype_ratios(results)


def print_dtype_ratios(results: dict[tuple[str, str], Result]) -> None:
    for (name, dtype), r in results.items():
        base = results.get((name, "float32"))
        if dtype != "float32" and base is not None:
            print(
                f"{name}, {dtype} / float32 (rlserve): M {r.m / base.m:.2f}x, "
                f"G {r.g / base.g:.2f}x, B1 {base.b1 / r.b1:.2f}x"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small version (~1-2 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="bundled,small,0.6b", help=f"of {sorted(MODELS)}")
    parser.add_argument("--hf-batch-sizes", default=None, help="comma-separated, e.g. 8,16")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="comma-separated; auto allowed")
    args = parser.parse_args()
    args.models = args.models.split(",")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {sorted(MODELS)}")
    dtypes = [auto_dtype(args.device) if d == "auto" else d for d in args.dtype.split(",")]
    bad = sorted(set(dtypes) - {"float32", "bfloat16", "float16"})
    if bad:
        parser.error(f"--dtype: unknown {bad}; known: float32, bfloat16, float16, auto")
    args.dtypes = list(dict.fromkeys(dtypes))
    sizes = args.hf_batch_sizes or ("12" if args.quick else "16")
    args.sizes = [int(s) for s in sizes.split(",")]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    w = QUICK if args.quick else FULL
    where = args.device if args.device != "cpu" else f"cpu, {args.threads} threads"
    print(f"{'quick' if args.quick else 'full'} run ({where})", flush=True)
    measured = measure_roofs(args.device, [getattr(torch, d) for d in args.dtypes])
    roofs = {d: measured[getattr(torch, d)] for d in args.dtypes}
    results: dict[tuple[str, str], Result] = {}
    for name in args.models:
        path = MODELS[name]()
        for dtype in args.dtypes:  # dtypes interleaved per model: comparable under drift
            print(f"{name}, {dtype}:", flush=True)
            results[name, dtype] = run_model(path, dtype, args, w, roofs[dtype])
    print_table(results, w, roofs)


if __name__ == "__main__":
    main()
