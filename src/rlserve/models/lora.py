"""LoRA adapters in PEFT's format, applied unmerged beside the base weights.

An adapter folder holds `adapter_config.json` (r, lora_alpha, use_rslora, ...) and
`adapter_model.safetensors` with `...layers.{i}.{self_attn|mlp}.{q,k,v,o,gate,up,down}_proj
.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]. A projection's output gains
`(x @ A.T) @ B.T * scale`, with scale = alpha / r (alpha / sqrt(r) with rslora), exactly as
PEFT computes it. Each token of a batch can use a different adapter (or none).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from rlserve._checks import is_int, is_number

if TYPE_CHECKING:
    from rlserve.models.llama import LlamaModel

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_DEFAULT_LORA_ALPHA = 8  # peft.LoraConfig().lora_alpha (peft 0.21)
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


@dataclass
class LoRAAdapter:
    name: str
    rank: int
    scale: float
    # (layer, target) -> (A [r, in], B [out, r])
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    version: int = 0
    load_id: int = 0  # which load it was: what its prefix-cache entries are keyed by


# Which rows of the batch use which adapter, for one forward pass.
LoRABatch = list[tuple[LoRAAdapter, torch.Tensor | None]]  # rows None = every row


def load_adapter(name: str, path: str | Path, model: LlamaModel) -> LoRAAdapter:
    """Read and check a PEFT adapter against `model`; ValueError naming any problem."""
    path = Path(path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise ValueError(
            f"{path} is not a PEFT adapter folder (needs adapter_config.json and "
            "adapter_model.safetensors)"
        )
    try:
        config = json.loads(config_file.read_text())
    except Exception as e:
        raise ValueError(f"cannot read adapter {path}: {e}") from e
    rank, scale = check_adapter_config(name, config)  # before reading the (large) weights
    try:
        tensors = load_file(str(weights_file))
    except Exception as e:
        raise ValueError(f"cannot read adapter {path}: {e}") from e
    pairs = _pair_tensors(name, tensors)
    dtype, device = model.embed_tokens.weight.dtype, model.embed_tokens.weight.device
    shapes = _target_shapes(model)
    weights = {}
    for (layer, target), (a, b) in pairs.items():
        if layer >= model.config.num_layers:
            raise ValueError(f"adapter {name}: layer {layer} does not exist in the model")
        out_dim, in_dim = shapes[target]
        if a.shape[1] != in_dim or b.shape[0] != out_dim or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"adapter {name}: {target} of layer {layer} has A {tuple(a.shape)}"
                f" and B {tuple(b.shape)}, the model needs [r, {in_dim}] and "
                f"[{out_dim}, r]"
            )
        weights[(layer, target)] = (a.to(device, dtype), b.to(device, dtype))
    return LoRAAdapter(name=name, rank=rank, scale=scale, weights=weights)


def check_adapter_config(name: str, config: object) -> tuple[int, float]:
    """(r, scale) from a parsed adapter_config.json; ValueError naming the problem unless r
    is a positive int, lora_alpha a finite number, and no unsupported feature is on.
    A missing lora_alpha is PEFT's `LoraConfig` default, 8."""
    if not isinstance(config, dict):
        raise ValueError(f"adapter {name}: adapter_config.json must hold a JSON object")
    rank, alpha = config.get("r"), config.get("lora_alpha", PEFT_DEFAULT_LORA_ALPHA)
    if not is_int(rank) or rank < 1:
        raise ValueError(f"adapter {name}: r must be a positive integer, got {repr(rank)[:80]}")
    if not is_number(alpha) or not math.isfinite(alpha):
        shown = repr(alpha)[:80]
        raise ValueError(f"adapter {name}: lora_alpha must be a finite number, got {shown}")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise ValueError(f"adapter {name}: per-module {key} is not supported")
    if config.get("use_dora"):
        raise ValueError(f"adapter {name}: DoRA adapters are not supported")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return rank, float(scale)


def _pair_tensors(name: str, tensors: dict[str, torch.Tensor]) -> dict:
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None or match.group(2) not in TARGETS:
            raise ValueError(
                f"adapter {name}: unsupported tensor {key!r} (LoRA on {', '.join(TARGETS)} only)"
            )
        found.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = tensor
    if not found:
        raise ValueError(f"adapter {name} holds no LoRA weights")
    for (layer, target), ab in found.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter {name}: {target} of layer {layer} lacks lora_A or lora_B")
    return {k: (v["A"], v["B"]) for k, v in found.items()}


def _target_shapes(model: LlamaModel) -> dict[str, tuple[int, int]]:
    c = model.config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    h, inter = c.hidden_size, c.intermediate_size
    return {
        "q_proj": (q, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, q),
        "gate_proj": (inter, h),
        "up_proj": (inter, h),
        "down_proj": (h, inter),
    }


def add_lora(
    out: torch.Tensor,
    x: torch.Tensor,
    lora: LoRABatch | None,
    layer: int,
    slices: dict[str, tuple[int, int]],
) -> torch.Tensor:
    """Add each adapter's low-rank update to the output columns of its targets."""
    if not lora:
        return out
    for adapter, rows in lora:
        xs = x if rows is None else x[rows]
        for target, (lo, hi) in slices.items():
            ab = adapter.weights.get((layer, target))
            if ab is None:
                continue
            delta = (xs @ ab[0].T) @ ab[1].T * adapter.scale
            if rows is None:
                out[:, lo:hi] += delta
            else:
                out[rows, lo:hi] += delta
    return out
