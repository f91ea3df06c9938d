"""Batch-1 decode against llama.cpp, the CPU peer, in the same run: f32, bf16 and int8.

The model is the random Qwen3-0.6B-shaped checkpoint (bench/checkpoint.py). For each format
this runs `llama-bench` (text generation only, `-p 0 -n TOKENS`) on its GGUF file, then
rlserve on the same checkpoint (fp32, bf16, int8 weight-only for q8_0), and prints tokens/s
side by side with the read-bandwidth roof measured now (weight bytes per token / read
bandwidth). rlserve's decode time is a generate of TOKENS + 1 tokens minus one of 1
token (the prefill), best of `--repeats`.

llama.cpp is not a dependency; build it once (no internet beyond PyPI is needed):
    pip download llama-cpp-python --no-deps -d /tmp/llama   # its sdist vendors llama.cpp
    tar xzf /tmp/llama/llama_cpp_python-*.tar.gz -C /tmp/llama && cd /tmp/llama/*/vendor/llama.cpp
    cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \\
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build build --target llama-bench llama-quantize -j
    PYTHONPATH=gguf-py python convert_hf_to_gguf.py CHECKPOINT --outtype f32 --outfile f32.gguf
    build/bin/llama-quantize f32.gguf bf16.gguf BF16
    build/bin/llama-quantize f32.gguf q8_0.gguf Q8_0
(the converter needs `sentencepiece` importable, and it refuses the stand-in tokenizer's
unknown pre-tokenizer hash: make `get_vocab_base_pre` in conversion/base.py return "qwen2"
for it; the vocabulary does not matter to a speed test.)
Usage: python bench/vs_llama_cpp.py --llama-bench PATH --gguf-dir DIR [--threads 1] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from checkpoint import qwen3_0_6b_checkpoint
from roofline import bandwidths

from rlserve import Engine, SamplingParams

# llama.cpp format -> rlserve's (dtype, quantization)
FORMATS = {"f32": ("float32", None), "bf16": ("bfloat16", None), "q8_0": ("float32", "int8")}
PROMPT = list(range(100, 108))


def llama_tokens_per_second(llama_bench: Path, gguf: Path, threads: int, tokens: int) -> float:
    argv = [str(llama_bench), "-m", str(gguf), "-p", "0", "-n", str(tokens)]
    argv += ["-t", str(threads), "-r", "3", "-o", "json"]
    rows = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return float(rows[0]["avg_ts"])


def rlserve_tokens_per_second(engine: Engine, tokens: int, repeats: int) -> float:
    def seconds(n: int) -> float:
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        engine.generate([PROMPT], params)
        return time.perf_counter() - start

    seconds(tokens + 1)  # warm
    decode = min(seconds(tokens + 1) - seconds(1) for _ in range(repeats))
    return tokens / decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-bench", type=Path, required=True)
    parser.add_argument("--gguf-dir", type=Path, required=True, help="f32/bf16/q8_0.gguf")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = qwen3_0_6b_checkpoint()
    _, read_bw = bandwidths("cpu")
    print(f"random Qwen3-0.6B shape, batch-1 decode, {args.threads} thread(s), ", end="")
    print(f"read bandwidth {read_bw / 1e9:.1f} GB/s")
    print(f"{'format':<6} {'llama.cpp tok/s':>16} {'rlserve tok/s':>14}", end="")
    print(f" {'ratio':>6} {'roof tok/s':>11}")
    for name, (dtype, quantization) in FORMATS.items():
        gguf = args.gguf_dir / f"{name}.gguf"
        theirs = llama_tokens_per_second(args.llama_bench, gguf, args.threads, args.tokens)
        engine = Engine(str(checkpoint), dtype=dtype, quantization=quantization, num_blocks=64)
        ours = rlserve_tokens_per_second(engine, args.tokens, args.repeats)
        roof = read_bw / _weight_bytes(engine)
        print(
            f"{name:<6} {theirs:>16.1f} {ours:>14.1f} {ours / theirs:>5.2f}x {roof:>11.1f}",
            flush=True,
        )
        del engine


def _weight_bytes(engine: Engine) -> int:
    """Bytes a decode step reads: every weight once (a tied head is the embedding)."""
    return sum(t.numel() * t.element_size() for t in engine.model.state_dict().values())


if __name__ == "__main__":
    main()
