"""Bundled model: rlserve `generate` vs transformers `generate`, batch of 16 chat prompts.

Both greedy, 32 new tokens (ignore EOS), same prompts, measured in one run.
Usage: python bench/bundled_generate.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from rlserve import Engine, SamplingParams

NEW_TOKENS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine()
    prompts = [
        engine.render_chat([{"role": "user", "content": f"What is {a} + {2 * a + 7}?"}])
        for a in range(10, 26)
    ]
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    engine.generate(prompts, params)  # warm-up
    ours = []
    for _ in range(args.repeats):
        engine.reset_prefix_cache()
        t = time.perf_counter()
        engine.generate(prompts, params)
        ours.append(time.perf_counter() - t)

    model = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=torch.float32).eval()
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    theirs = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        theirs.append(time.perf_counter() - t)
    theirs = theirs[1:]  # the first call warms up
    tokens = len(prompts) * NEW_TOKENS
    ours_tps, theirs_tps = tokens / min(ours), tokens / min(theirs)
    print(
        f"bundled model, batch of {len(prompts)}, {NEW_TOKENS} new tokens each, "
        f"{args.threads} threads (best of {args.repeats})"
    )
    print("| engine | output tok/s |\n|---|---|")
    print(f"| rlserve generate | {ours_tps:.0f} |\n| transformers generate | {theirs_tps:.0f} |")
    print(f"ratio: {ours_tps / theirs_tps:.2f}x")


if __name__ == "__main__":
    main()
