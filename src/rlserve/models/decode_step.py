"""A few tokens' forward of a small fp32 CPU model in one native call (`decode_step.cpp`).

A draft model's decode forward (hidden 128, 2 layers) costs ~0.9 ms through the module
path, nearly all of it the dispatch of ~100 small ops; the same arithmetic in one C++
loop takes under 0.1 ms. `DecodeStep` runs that loop over the model's paged KV cache:
each row is one new token of a sequence (a few rows of one sequence make a short
prefill); its K/V goes to its cache slot, as the module path writes it, so both paths
can serve one sequence in turn. It returns each row's greedy next token and that token's
logprob, not logits.

Its numbers are the module path's up to summation order (last bits), so it serves only a
model whose outputs affect speed alone: the speculative-decoding draft
(engine/draft_loop.py). Models it cannot run (not fp32 on CPU, not contiguous) report
why in `unsupported_reason`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import subprocess
from pathlib import Path

import torch

from rlserve.models.llama import LlamaModel
from rlserve.models.native_build import build

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_step.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c++17"]
_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded library, or None (one warning) where it cannot be built."""
    try:
        lib = ctypes.CDLL(str(build(SOURCE, FLAGS)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("decode-step kernel unavailable: %s", exc)
        return None
    fn = lib.rlserve_decode_step
    fn.restype = ctypes.c_int
    fn.argtypes = [_I64, _PTR, _PTR, _PTR, _PTR, _I64, _PTR] + [_I64] * 8
    fn.argtypes += [_F32, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
    return lib


def unsupported_reason(model: LlamaModel) -> str | None:
    """Why `DecodeStep` cannot run `model`, or None when it can."""
    tensors = [*model.parameters(), model.rope.cos, model.rope.sin]
    tensors += [
        t for layer in model.layers for t in (layer.self_attn.k_cache, layer.self_attn.v_cache)
    ]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return "needs every weight and the KV cache in fp32 on CPU"
    if any(not t.is_contiguous() for t in tensors):
        return "needs contiguous weights and KV cache"
    if any(layer.self_attn.k_cache.dim() != 4 for layer in model.layers):
        return "the KV cache is not allocated yet"
    if kernel() is None:
        return "the kernel could not be built"
    return None


class DecodeStep:
    """Greedy decode forwards of `model` over its paged KV cache (`block_size` tokens per
    block), one native call each. It computes with copies of the weights taken here, so
    it serves a model whose weights never change (a draft's)."""

    def __init__(self, model: LlamaModel, block_size: int) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"DecodeStep cannot run this model: {reason}")
        self.model, self.block_size = model, block_size
        c = model.config
        self.dims = [c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim]
        self.dims += [c.intermediate_size, c.vocab_size, block_size]
        self.eps = c.rms_norm_eps
        head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        # Input-major copies of the matmul weights (the kernel's layout; a draft's ~2 MB).
        self.copies = [_input_major(head)]
        self.globals = [model.embed_tokens.weight, self.copies[0], model.norm.weight]
        pointers = []
        for layer in model.layers:
            pointers += _layer_pointers(layer, self.copies)
        self.layer_ptrs = (_PTR * len(pointers))(*pointers)

    def run(
        self,
        token_ids: list[int],
        positions: list[int],
        block_tables: list[list[int]],
    ) -> tuple[list[int], list[float]]:
        """Row r: token `token_ids[r]` at `positions[r]` of the sequence whose blocks are
        `block_tables[r]` (covering that position); it attends to positions 0..positions[r].
        Rows run in order, each writing its K/V before attending, so several rows of one
        sequence in increasing positions work as a short prefill. Returns each row's
        greedy next token and its logprob."""
        bs, rows = self.block_size, len(token_ids)
        if not rows or not len(positions) == len(block_tables) == rows:
            raise ValueError("need one position and one block table per token (and a token)")
        max_positions = self.model.rope.cos.shape[0]
        num_blocks = self.model.layers[0].self_attn.k_cache.shape[0]
        for p, table in zip(positions, block_tables, strict=True):
            if not 0 <= p < max_positions or len(table) <= p // bs:
                raise ValueError(f"position {p} is outside [0, {max_positions}) or its blocks")
            used = table[: p // bs + 1]  # the blocks the row reads and writes
            if not 0 <= min(used) <= max(used) < num_blocks:
                raise ValueError(f"block ids must be in [0, {num_blocks}), got {used}")
        width = max(len(t) for t in block_tables)
        slots = [t[p // bs] * bs + p % bs for t, p in zip(block_tables, positions, strict=True)]
        ids, pos, slot = (torch.tensor(v, dtype=torch.long) for v in (token_ids, positions, slots))
        tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.long)
        lens = pos + 1
        tokens = torch.empty(rows, dtype=torch.long)
        logprobs = torch.empty(rows, dtype=torch.float32)
        rope = self.model.rope
        status = kernel().rlserve_decode_step(  # type: ignore[union-attr]
            rows,
            ids.data_ptr(),
            pos.data_ptr(),
            slot.data_ptr(),
            tables.data_ptr(),
            width,
            lens.data_ptr(),
            *self.dims,
            self.eps,
            *(t.data_ptr() for t in self.globals),
            self.layer_ptrs,
            rope.cos.data_ptr(),
            rope.sin.data_ptr(),
            tokens.data_ptr(),
            logprobs.data_ptr(),
        )
        if status != 0:
            raise ValueError(f"decode-step kernel refused its input (status {status})")
        return tokens.tolist(), logprobs.tolist()


def _input_major(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().t().contiguous()


def _layer_pointers(layer, copies: list[torch.Tensor]) -> list[int | None]:
    """The layer's pointers in decode_step.cpp's LayerPtr order (None: absent); its
    matmul weights as input-major copies, kept alive in `copies`."""
    attn, mlp = layer.self_attn, layer.mlp

    def ptr(t: torch.Tensor | None) -> int | None:
        return None if t is None else t.data_ptr()

    def weight(linear) -> int:
        copies.append(_input_major(linear.weight))
        return copies[-1].data_ptr()

    return [
        ptr(layer.input_layernorm.weight),
        weight(attn.qkv_proj),
        ptr(attn.qkv_proj.bias),
        ptr(None if attn.q_norm is None else attn.q_norm.weight),
        ptr(None if attn.k_norm is None else attn.k_norm.weight),
        weight(attn.o_proj),
        ptr(attn.o_proj.bias),
        ptr(layer.post_attention_layernorm.weight),
        weight(mlp.gate_up_proj),
        weight(mlp.down_proj),
        ptr(attn.k_cache),
        ptr(attn.v_cache),
    ]
