"""The peer: transformers `generate` over left-padded batches of the same requests."""

from __future__ import annotations

import time

import torch

TEMPERATURE = 0.8


def load_hf(path, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def run_hf_m(model, requests: list[tuple[list[int], int]], batch_size: int) -> tuple[float, int]:
    """(requested output tokens per second, steps: one weight read per generated position).
    Counts only the requested tokens, not the padding rows generate also computes."""
    device = model.device
    steps = 0
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
        steps += new
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
    return sum(n for _, n in requests) / (time.perf_counter() - t), steps
