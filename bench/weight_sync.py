"""Weight-sync speed on the Qwen3-0.6B-shaped fp32 checkpoint, measured in one run:

- in-process `Engine.update_weights(state_dict)` vs a plain torch copy of the same bytes
  into preallocated tensors (goal: <= 1.5x);
- over HTTP from a second process on loopback: `POST /update_weights` with the safetensors
  bytes streamed in the request body (goal: >= 1 GB/s);
- LoRA rank 16 on all linear modules: load time and swap time (goal: < 100 ms).
Usage: python bench/weight_sync.py [--threads 2] [--skip-http]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from checkpoint import qwen3_0_6b_checkpoint
from safetensors.torch import save_file

from rlserve import Engine, SamplingParams

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_lora(engine: Engine, folder: Path, rank: int = 16) -> Path:
    """A random PEFT-format adapter on every linear module of every layer."""
    c = engine.model.config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes = {
        "q_proj": (q, c.hidden_size),
        "k_proj": (kv, c.hidden_size),
        "v_proj": (kv, c.hidden_size),
        "o_proj": (c.hidden_size, q),
        "gate_proj": (c.intermediate_size, c.hidden_size),
        "up_proj": (c.intermediate_size, c.hidden_size),
        "down_proj": (c.hidden_size, c.intermediate_size),
    }
    tensors = {}
    for layer in range(c.num_layers):
        for target, (out_dim, in_dim) in shapes.items():
            kind = "self_attn" if target in TARGETS[:4] else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{kind}.{target}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_dim) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_dim, rank) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {"r": rank, "lora_alpha": 32, "target_modules": list(TARGETS), "peft_type": "LORA"}
        )
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = qwen3_0_6b_checkpoint()
    engine = Engine(path, num_blocks=64)
    state = {n: t.clone() for n, t in engine.model.hf_weight_targets().items()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    destinations = {n: torch.empty_like(t) for n, t in state.items()}

    def plain_copy() -> None:
        for name, tensor in state.items():
            destinations[name].copy_(tensor)

    copy_s = best_of(plain_copy)
    update_s = best_of(lambda: engine.update_weights(state))
    rows = [
        (
            "update_weights(state_dict), in-process",
            f"{update_s * 1e3:.0f} ms",
            f"{copy_s * 1e3:.0f} ms (torch copy of the same {nbytes / 1e9:.2f} GB)",
            f"{update_s / copy_s:.2f}x",
        )
    ]

    with tempfile.TemporaryDirectory() as tmp:
        lora = make_lora(engine, Path(tmp) / "lora16")
        load_s = best_of(lambda: engine.load_lora("bench", lora))
        prompt = list(range(100, 116))
        params = SamplingParams(temperature=0, max_tokens=1)
        engine.generate(prompt, params, lora_name="bench")
        swap_s = best_of(lambda: engine.generate(prompt, params, lora_name=None))
        with_lora_s = best_of(lambda: engine.generate(prompt, params, lora_name="bench"))
    rows.append(
        (
            "LoRA r16 all-linear: load (from disk)",
            f"{load_s * 1e3:.0f} ms",
            "100 ms goal",
            f"{load_s / 0.1:.2f}x of goal",
        )
    )
    rows.append(
        (
            "LoRA swap: next request on another adapter",
            "0 ms (per-request choice, no weight copy)",
            f"16-token prefill {with_lora_s * 1e3:.0f} ms with LoRA, {swap_s * 1e3:.0f} ms without",
            "-",
        )
    )
    if not args.skip_http:
        from http_update import measure_http_update

        rows.append(measure_http_update(path, state, nbytes))

    print(f"\nweights {nbytes / 1e9:.2f} GB fp32, {args.threads} threads")
    print("| measure | rlserve | peer | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
