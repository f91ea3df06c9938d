"""Small random-weight Hugging Face checkpoints of each supported family, built on the fly."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 320
EOS = "<|eos|>"
_CORPUS = [
    "the quick brown fox jumps over the lazy dog 0123456789",
    "reinforcement learning from rollouts, logprobs and rewards",
    "What is 37 + 48? It is 85. Hello world!",
] * 20

_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.2,
)

# name -> (config class, model class, extra config fields)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False)),
    "llama3-rope-bias": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            tie_word_embeddings=True,
            attention_bias=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(tie_word_embeddings=False, head_dim=32)),
    "qwen3-tied-mha": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(tie_word_embeddings=True, num_key_value_heads=4, head_dim=16),
    ),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def build_checkpoint(path: Path, family: str, seed: int = 0) -> Path:
    """Save a random model of `family` with the test tokenizer at `path`."""
    config_cls, model_cls, extra = FAMILIES[family]
    tokenizer = build_tokenizer()
    config = config_cls(
        **{**_SHAPE, **extra},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def load_hf(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def save_lora(base: Path, folder: Path, seed: int = 0) -> Path:
    """A PEFT LoRA (r 4, q_proj, non-zero B) for the checkpoint at `base`, saved in `folder`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=["q_proj"])
    get_peft_model(load_hf(base), config).save_pretrained(folder)
    return folder
