"""Model configuration read from a Hugging Face `config.json` (via transformers.AutoConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-family decoder; the three families differ only in flags."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 always; Llama when attention_bias
    o_bias: bool  # Llama with attention_bias
    qk_norm: bool  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported rope_scaling type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}"
            )

    @classmethod
    def from_hf(cls, hf: Any) -> ModelConfig:
        archs = list(getattr(hf, "architectures", None) or [])
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"unsupported architecture {archs or getattr(hf, 'model_type', '?')}; "
                f"rlserve supports {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        num_heads = hf.num_attention_heads
        attention_bias = bool(getattr(hf, "attention_bias", False))
        return cls(
            architecture=arch,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // num_heads,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=_rope_theta(hf),
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            qkv_bias=arch == "Qwen2ForCausalLM" or attention_bias,
            o_bias=arch == "LlamaForCausalLM" and attention_bias,
            qk_norm=arch == "Qwen3ForCausalLM",
            rope_scaling=_rope_scaling(hf),
        )


def _rope_parameters(hf: Any) -> dict[str, Any]:
    # transformers >= 5 keeps theta and scaling in `rope_parameters`; older ones use
    # `rope_theta` and `rope_scaling`.
    params = getattr(hf, "rope_parameters", None)
    return dict(params) if isinstance(params, dict) else {}


def _rope_theta(hf: Any) -> float:
    theta = _rope_parameters(hf).get("rope_theta") or getattr(hf, "rope_theta", None)
    return float(theta or 10000.0)


def _rope_scaling(hf: Any) -> dict[str, Any] | None:
    scaling = _rope_parameters(hf) or dict(getattr(hf, "rope_scaling", None) or {})
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type == "default":
        return None
    return {**scaling, "rope_type": rope_type}
