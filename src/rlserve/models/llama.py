"""The Llama family in plain PyTorch: Llama (incl. Llama 3 rope scaling), Qwen2, Qwen3.

One module with flags (qkv bias, q/k norm, tied head). It runs on a flat packed batch:
`forward(input_ids [T], positions [T], meta)` returns hidden states [T, hidden], and
`compute_logits` turns only the rows that need them into fp32 logits.
q/k/v and gate/up are fused into one matmul each; `hf_weight_targets` says which slice
of which fused parameter every Hugging Face tensor name fills.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rlserve.models.attention import AttentionMetadata, attention_backends, paged_attention
from rlserve.models.config import ModelConfig
from rlserve.models.fused import (
    add_rms_norm,
    qk_norm_rope,
    rms_norm,
    rms_norm_reference,
    silu_mul,
)
from rlserve.models.linear import Linear, linear
from rlserve.models.lora import LoRABatch, add_lora


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and scale after casting back, exactly as transformers does.
        return rms_norm_reference(x, self.weight, self.eps)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    return inv_freq


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between."""
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


RopeAngles = tuple[torch.Tensor, torch.Tensor]


class RotaryEmbedding(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        freqs = torch.arange(max_positions).float()[:, None] * rope_inv_freq(config)[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeAngles:
        """cos and sin of every position, [T, head_dim] in `dtype`, looked up once per batch."""
        return self.cos[positions].to(dtype), self.sin[positions].to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.qkv_bias
        )
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=config.o_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.scale = self.head_dim**-0.5
        q, kv = self.q_size, self.kv_size
        self.qkv_slices = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}
        self.o_slices = {"o_proj": (0, config.hidden_size)}
        self.k_cache = torch.empty(0)  # set by the model runner
        self.v_cache = torch.empty(0)

    def forward(
        self, x: torch.Tensor, angles: RopeAngles, meta: AttentionMetadata, lora: LoRABatch | None
    ) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = add_lora(self.qkv_proj(x), x, lora, self.layer_idx, self.qkv_slices)
        norms = None
        if self.q_norm is not None and self.k_norm is not None:
            norms = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
        q, k, v = qk_norm_rope(qkv, self.num_heads, self.num_kv_heads, self.head_dim, norms, angles)
        out = paged_attention(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        out = out.view(tokens, self.q_size)
        return add_lora(self.o_proj(out), out, lora, self.layer_idx, self.o_slices)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        inter = config.intermediate_size
        self.gate_up_slices = {"gate_proj": (0, inter), "up_proj": (inter, 2 * inter)}
        self.down_slices = {"down_proj": (0, config.hidden_size)}
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, lora: LoRABatch | None) -> torch.Tensor:
        gate_up = add_lora(self.gate_up_proj(x), x, lora, self.layer_idx, self.gate_up_slices)
        h = silu_mul(gate_up)
        return add_lora(self.down_proj(h), h, lora, self.layer_idx, self.down_slices)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        h: torch.Tensor,
        residual: torch.Tensor,
        angles: RopeAngles,
        meta: AttentionMetadata,
        lora: LoRABatch | None,
    ) -> torch.Tensor:
        """`h` is this layer's normalised input, `residual` the residual stream (updated in
        place); returns the MLP output, which the next norm adds to the stream."""
        attn_out = self.self_attn(h, angles, meta, lora)
        norm = self.post_attention_layernorm
        return self.mlp(add_rms_norm(attn_out, residual, norm.weight, norm.eps), lora)


class LlamaModel(nn.Module):
    """Decoder-only transformer; parameter names mirror Hugging Face's, with fused q/k/v
    (`qkv_proj`) and gate/up (`gate_up_proj`)."""

    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rope = RotaryEmbedding(config, max_positions)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        lora: LoRABatch | None = None,
    ) -> torch.Tensor:
        """Hidden states of a flat batch; `lora` says which rows use which adapter."""
        residual = self.embed_tokens(input_ids)
        angles = self.rope(positions, residual.dtype)
        # x + f(norm(x)) per block, kept as a residual stream: each norm adds the previous
        # block's output to the stream (in place) and normalises it, in one fused op.
        norms = [layer.input_layernorm for layer in self.layers] + [self.norm]
        h = rms_norm(residual, norms[0].weight, norms[0].eps)
        with attention_backends(residual.device):
            for layer, norm in zip(self.layers, norms[1:], strict=True):
                out = layer(h, residual, angles, meta, lora)
                h = add_rms_norm(out, residual, norm.weight, norm.eps)
        return h

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return linear(hidden, weight).float()

    def hf_weight_targets(self) -> dict[str, torch.Tensor]:
        """Every Hugging Face parameter name -> the tensor (or fused slice) it fills."""
        c = self.config
        targets: dict[str, torch.Tensor] = {
            "model.embed_tokens.weight": self.embed_tokens.weight,
            "model.norm.weight": self.norm.weight,
        }
        if self.lm_head is not None:
            targets["lm_head.weight"] = self.lm_head.weight
        for i, layer in enumerate(self.layers):
            pre, attn = f"model.layers.{i}", layer.self_attn
            q, kv = attn.q_size, attn.kv_size
            bounds = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}
            for name, (lo, hi) in bounds.items():
                targets[f"{pre}.self_attn.{name}.weight"] = attn.qkv_proj.weight[lo:hi]
                if c.qkv_bias:
                    targets[f"{pre}.self_attn.{name}.bias"] = attn.qkv_proj.bias[lo:hi]
            targets[f"{pre}.self_attn.o_proj.weight"] = attn.o_proj.weight
            if c.o_bias:
                targets[f"{pre}.self_attn.o_proj.bias"] = attn.o_proj.bias
            if attn.q_norm is not None and attn.k_norm is not None:
                targets[f"{pre}.self_attn.q_norm.weight"] = attn.q_norm.weight
                targets[f"{pre}.self_attn.k_norm.weight"] = attn.k_norm.weight
            inter = c.intermediate_size
            gate_up = layer.mlp.gate_up_proj.weight
            targets[f"{pre}.mlp.gate_proj.weight"] = gate_up[:inter]
            targets[f"{pre}.mlp.up_proj.weight"] = gate_up[inter:]
            targets[f"{pre}.mlp.down_proj.weight"] = layer.mlp.down_proj.weight
            targets[f"{pre}.input_layernorm.weight"] = layer.input_layernorm.weight
            targets[f"{pre}.post_attention_layernorm.weight"] = (
                layer.post_attention_layernorm.weight
            )
        return targets
