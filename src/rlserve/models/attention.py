"""Attention over a paged KV cache: the one device-specific seam of the engine.

Every layer owns a K and a V cache of shape [num_blocks, block_size, num_kv_heads, head_dim].
A batch is flat: the new tokens of all scheduled sequences are concatenated. Each token's
K/V is written to its slot (block * block_size + offset), then each sequence attends over
its pages. On CPU (fp32/bf16) decodes, and prefills of a few tokens over a cached prefix,
run the paged kernel of `paged_kernel.py`, which reads the pages in place; everything else,
and every case where the kernel cannot be built or `RLSERVE_PAGED_KERNEL=0`, gathers the
pages and calls torch SDPA (the reference), which works on CPU and CUDA alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from rlserve.models import paged_kernel

# `enable_gqa` (torch >= 2.5) lets SDPA broadcast K/V heads without copying them.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)
# Longest prefill over a cached prefix sent to the paged kernel: it computes one query row
# at a time (no GEMM), so past a few rows SDPA's flash kernel wins despite the gather
# (measured, 0.6B shape, ctx 512/1024: kernel 1.5-1.8x faster at 2 rows, even at 4, 0.4-0.8x
# at 8 and 2.4x slower at 16).
KERNEL_MAX_PREFILL = 4


@dataclass
class PrefillSpan:
    """One sequence with several new tokens: q rows [start, start + q_len), context ctx_len."""

    start: int
    q_len: int
    ctx_len: int
    block_table: torch.Tensor  # [num_blocks_of_seq] int64
    kernel_plan: paged_kernel.Plan | None = field(default=None, repr=False, compare=False)


@dataclass
class DecodeGroup:
    """Single-token sequences of similar context length, attended together (padded)."""

    rows: torch.Tensor  # [B] rows of q
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with block 0
    mask: torch.Tensor  # [B, 1, 1, max_blocks * block_size] bool, True = attend
    context_lens: torch.Tensor | None = None  # [B] int64; derived from mask when None


@dataclass
class AttentionMetadata:
    """Where each new token goes in the cache and what each sequence attends to."""

    slot_mapping: torch.Tensor  # [T] int64, the cache slot of every new token
    prefills: list[PrefillSpan]
    decodes: list[DecodeGroup]
    # all decode groups as one kernel call, built by the first layer, reused by the others
    decode_plan: paged_kernel.Plan | None = field(default=None, repr=False, compare=False)


def attention_backends(device: torch.device) -> contextlib.AbstractContextManager:
    """Enter around a forward pass. On CUDA it keeps SDPA off cuDNN, whose planning costs
    ~0.5 ms of CPU per call (H100): with it, the 64-request benchmark ran 1.8x slower."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store the new tokens' K/V ([T, kv_heads, head_dim]) in their cache slots."""
    kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q: [T, heads, head_dim]; k, v: [T, kv_heads, head_dim] -> [T, heads, head_dim]."""
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    out = torch.empty_like(q)
    for span in meta.prefills:
        rows = slice(span.start, span.start + span.q_len)
        if span.ctx_len == span.q_len:  # nothing cached before: attend to the fresh K/V
            keys, values = k[rows], v[rows]
        elif span.q_len <= KERNEL_MAX_PREFILL and paged_kernel.supports(q, k_cache):
            _kernel_prefill(q, k_cache, v_cache, span, scale, out)
            continue
        else:
            keys = _gather(k_cache, span.block_table, span.ctx_len)
            values = _gather(v_cache, span.block_table, span.ctx_len)
        out[rows] = _prefill_attention(q[rows], keys, values, scale)
    if meta.decodes and paged_kernel.supports(q, k_cache):
        paged_kernel.run(q, _decode_plan(meta, q, k_cache), k_cache, v_cache, scale, out)
        return out
    for group in meta.decodes:
        out[group.rows] = _decode_attention(q[group.rows], k_cache, v_cache, group, scale)
    return out


def _kernel_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    span: PrefillSpan,
    scale: float,
    out: torch.Tensor,
) -> None:
    """A few new tokens over a cached prefix: one kernel row per token, each with its causal
    length, all reading the span's one block table (a stride-0 view, not a copy)."""
    plan = span.kernel_plan
    if plan is None or not paged_kernel.fits(plan, q, k_cache):
        rows = torch.arange(span.start, span.start + span.q_len)
        lens = torch.arange(span.ctx_len - span.q_len + 1, span.ctx_len + 1)
        tables = span.block_table.expand(span.q_len, -1)
        plan = span.kernel_plan = paged_kernel.plan(rows, tables, lens, q.shape[0], k_cache)
    paged_kernel.run(q, plan, k_cache, v_cache, scale, out)


def _decode_plan(
    meta: AttentionMetadata, q: torch.Tensor, k_cache: torch.Tensor
) -> paged_kernel.Plan:
    """Every decode group in one kernel call (the SDPA path's groups only bound its gathers):
    one thread pool wake-up per layer, and the kernel balances all rows across threads."""
    plan = meta.decode_plan
    if plan is None or not paged_kernel.fits(plan, q, k_cache):
        groups = meta.decodes
        width = max(g.block_tables.shape[1] for g in groups)
        tables = torch.cat(
            [F.pad(g.block_tables, (0, width - g.block_tables.shape[1])) for g in groups]
        )
        rows = torch.cat([g.rows for g in groups])
        lens = torch.cat([_context_lens(g) for g in groups])
        plan = meta.decode_plan = paged_kernel.plan(rows, tables, lens, q.shape[0], k_cache)
    return plan


def _context_lens(group: DecodeGroup) -> torch.Tensor:
    if group.context_lens is None:
        group.context_lens = group.mask.flatten(1).sum(1)
    return group.context_lens


def _gather(cache: torch.Tensor, block_table: torch.Tensor, ctx_len: int) -> torch.Tensor:
    pages = cache.index_select(0, block_table)  # [nb, block_size, kv_heads, head_dim]
    return pages.flatten(0, 1)[:ctx_len]


def _prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of q_len new tokens that sit at the end of ctx_len context tokens."""
    q_len, ctx_len = q.shape[0], k.shape[0]
    # [1, heads, len, head_dim]: with a batch dim, CPU SDPA takes its flash kernel (2x
    # faster); without one it falls back to the unfused math path.
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    if q_len == ctx_len:
        out = _sdpa(q, k, v, mask=None, causal=True, scale=scale)
    else:
        offset = ctx_len - q_len
        key_pos = torch.arange(ctx_len, device=q.device)
        query_pos = torch.arange(offset, ctx_len, device=q.device)
        mask = key_pos[None, :] <= query_pos[:, None]
        out = _sdpa(q, k, v, mask=mask, causal=False, scale=scale)
    return out.squeeze(0).transpose(0, 1)


def _decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: DecodeGroup, scale: float
) -> torch.Tensor:
    """One query per sequence over its gathered pages, padded to the group's longest."""
    batch, max_blocks = group.block_tables.shape
    span = max_blocks * k_cache.shape[1]
    pages = group.block_tables.flatten()
    keys = k_cache.index_select(0, pages).view(batch, span, *k_cache.shape[2:])
    values = v_cache.index_select(0, pages).view(batch, span, *v_cache.shape[2:])
    if q.device.type == "cuda":
        return decode_attention_matmul(q, keys, values, group.mask, scale)
    out = _sdpa(
        q.unsqueeze(2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        mask=group.mask,
        causal=False,
        scale=scale,
    )
    return out.squeeze(2)


def decode_attention_matmul(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Decode attention as two batched matmuls: q [B, H, D], keys/values [B, S, KVH, D],
    mask [B, 1, 1, S]. Used on CUDA, where choosing an SDPA backend for a masked
    grouped-query decode costs ~0.4 ms of CPU per call (H100), more than the work itself."""
    batch, heads, head_dim = q.shape
    kv_heads = keys.shape[2]
    q = q.view(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(q, keys.permute(0, 2, 3, 1)).float() * scale  # [B, KVH, G, S]
    scores = scores.masked_fill(~mask.view(batch, 1, 1, -1), float("-inf"))
    probs = scores.softmax(dim=-1).to(values.dtype)
    return torch.matmul(probs, values.transpose(1, 2)).reshape(batch, heads, head_dim)


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """SDPA with grouped-query heads: q [..., H, L, D], k/v [..., KVH, S, D]."""
    groups = q.shape[-3] // k.shape[-3]
    if groups > 1 and not _SDPA_HAS_GQA:
        k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
    kwargs = {"enable_gqa": True} if groups > 1 and _SDPA_HAS_GQA else {}
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, **kwargs
    )
