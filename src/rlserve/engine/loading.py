"""What `EngineCore` reads beside the weights, and how many KV blocks it allocates."""

from __future__ import annotations

from transformers import GenerationConfig

from rlserve.config import DEFAULT_KV_CACHE_MEMORY, EngineConfig
from rlserve.engine.model_runner import ModelRunner
from rlserve.models.llama import LlamaModel


def eos_token_ids(path: str, tokenizer, hf_config, vocab_size: int) -> set[int]:
    """The tokenizer's EOS and the generation config's (or model config's) EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    try:
        gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        gen_eos = getattr(hf_config, "eos_token_id", None)
    if gen_eos is not None:
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    # A generation_config may name ids the model has no logits for: they never come.
    return {t for t in ids if 0 <= t < vocab_size}


def num_kv_blocks(config: EngineConfig, model: LlamaModel, max_model_len: int) -> int:
    """`num_blocks` if set; else what `kv_cache_memory` holds, but no more than
    `max_num_seqs` sequences of `max_model_len` tokens can use."""
    if config.num_blocks is not None:
        return config.num_blocks
    per_block = ModelRunner.kv_bytes_per_block(model, config.block_size, config.torch_dtype)
    budget = config.kv_cache_memory or DEFAULT_KV_CACHE_MEMORY
    useful = config.max_num_seqs * -(-max_model_len // config.block_size)
    return max(1, min(budget // per_block, useful))
