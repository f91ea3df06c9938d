"""Random-weight Qwen3-shaped checkpoints (0.6B's real shapes, and a ~50M one), built once
and cached on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config

from rlserve.config import BUNDLED_MODEL

CACHE = Path(__file__).parent / ".cache"

QWEN3_0_6B = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

# ~48M parameters: a small model whose 32k vocabulary is a third of it, as in small LMs.
QWEN3_SMALL = QWEN3_0_6B | dict(
    vocab_size=32768,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=10,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
)


def qwen3_0_6b_checkpoint() -> Path:
    """Folder of the random Qwen3-0.6B-shaped checkpoint (fp32), built on first use."""
    return random_checkpoint("qwen3-0.6b-random", QWEN3_0_6B)


def qwen3_small_checkpoint() -> Path:
    """Folder of the random ~50M-parameter Qwen3-shaped checkpoint (fp32)."""
    return random_checkpoint("qwen3-small-random", QWEN3_SMALL)


def random_checkpoint(name: str, shape: dict) -> Path:
    """Folder `name` in the cache holding a random-weight Qwen3 checkpoint of `shape`."""
    path = CACHE / name
    if (path / "model.safetensors").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    config = Qwen3Config(**shape, architectures=["Qwen3ForCausalLM"])
    config.save_pretrained(path)
    save_file(_random_weights(config), str(path / "model.safetensors"))
    # The bundled tokenizer stands in: prompts are token ids; text is only for display.
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (BUNDLED_MODEL / name).exists():
            shutil.copy(BUNDLED_MODEL / name, path / name)
    return path


def _random_weights(c: Qwen3Config) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    weights = {
        "model.embed_tokens.weight": rand(c.vocab_size, h),
        "model.norm.weight": torch.ones(h),
    }
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.self_attn.q_proj.weight": rand(q, h),
            f"{p}.self_attn.k_proj.weight": rand(kv, h),
            f"{p}.self_attn.v_proj.weight": rand(kv, h),
            f"{p}.self_attn.o_proj.weight": rand(h, q),
            f"{p}.self_attn.q_norm.weight": torch.ones(c.head_dim),
            f"{p}.self_attn.k_norm.weight": torch.ones(c.head_dim),
            f"{p}.mlp.gate_proj.weight": rand(c.intermediate_size, h),
            f"{p}.mlp.up_proj.weight": rand(c.intermediate_size, h),
            f"{p}.mlp.down_proj.weight": rand(h, c.intermediate_size),
            f"{p}.input_layernorm.weight": torch.ones(h),
            f"{p}.post_attention_layernorm.weight": torch.ones(h),
        }
    return weights
