"""Runs the model on one scheduled batch, packed flat with no padding.

The new tokens of every scheduled sequence are concatenated into one [T] batch with their
positions and KV-cache slots. Logits are computed, in fp32, only for the rows that need
them: the last row of a sequence that will sample, and the prompt rows of a sequence
that asked for prompt logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlserve.engine.scheduler import ScheduledBatch
from rlserve.models.attention import AttentionMetadata, DecodeGroup, PrefillSpan
from rlserve.models.llama import LlamaModel
from rlserve.models.lora import LoRAAdapter, LoRABatch

MAX_PADDING = 1.25  # gathered pages / pages actually needed, per decode group
# On CPU a decode group's gathered K (and V) should stay cache-sized: attending 64
# sequences x 400 tokens in one gathered call is 3.5x slower than in 2 MiB groups
# (bench/kernels.py).
CPU_MAX_GROUP_KV_BYTES = 2 << 20


@dataclass
class RunnerOutput:
    sample_logits: torch.Tensor  # [num sampling seqs, vocab] fp32
    sample_seqs: list[int]  # index into batch.seqs for each row of sample_logits
    prompt_logits: dict[int, tuple[int, torch.Tensor]]  # batch index -> (first pos, logits)
    # Speculation: batch index -> fp32 logits of all its rows (last token, then guesses)
    draft_logits: dict[int, torch.Tensor] | None = None


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        c = model.config
        shape = (num_blocks, block_size, c.num_kv_heads, c.head_dim)
        page_bytes = block_size * c.num_kv_heads * c.head_dim * dtype.itemsize
        self.max_group_pages = (
            CPU_MAX_GROUP_KV_BYTES // page_bytes if device.type == "cpu" else None
        )
        self._kv_shape, self._kv_dtype = shape, dtype
        self.allocate_kv_cache()

    @property
    def kv_dtype(self) -> torch.dtype:
        """The engine dtype (KV cache and activations)."""
        return self._kv_dtype

    def allocate_kv_cache(self) -> None:
        """(Re-)allocate every layer's K and V cache tensors, zeroed."""
        # zeros, not empty: padded pages are masked out of attention, but a NaN left in
        # uninitialised memory would still poison the weighted sum (0 * NaN = NaN).
        shape, dtype, device = self._kv_shape, self._kv_dtype, self.device
        for layer in self.model.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def free_kv_cache(self) -> int:
        """Drop every layer's K and V cache tensors (empty ones take their place); returns
        the bytes they held. Nothing may run until `allocate_kv_cache()`."""
        freed = self.kv_cache_bytes
        for layer in self.model.layers:
            layer.self_attn.k_cache = torch.empty(0, dtype=self._kv_dtype, device=self.device)
            layer.self_attn.v_cache = torch.empty(0, dtype=self._kv_dtype, device=self.device)
        return freed

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes the K and V cache tensors hold now (0 while freed)."""
        return sum(
            t.untyped_storage().nbytes()
            for layer in self.model.layers
            for t in (layer.self_attn.k_cache, layer.self_attn.v_cache)
        )

    @staticmethod
    def kv_bytes_per_block(model: LlamaModel, block_size: int, dtype: torch.dtype) -> int:
        c = model.config
        return 2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * dtype.itemsize

    @torch.inference_mode()
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for layer in self.model.layers:
            attn = layer.self_attn
            attn.k_cache[dst] = attn.k_cache[src]
            attn.v_cache[dst] = attn.v_cache[src]

    @torch.inference_mode()
    def run(
        self, batch: ScheduledBatch, samples: list[bool], adapters: dict[str, LoRAAdapter]
    ) -> RunnerOutput:
        """Forward the batch; `samples[i]` says whether batch.seqs[i] samples a token.
        `batch.block_copies` must have been run first (`copy_blocks`)."""
        input_ids, positions, slots = [], [], []
        prefills, decodes = [], []  # decodes: (row, block table, context length)
        sample_rows, sample_seqs, prompt_rows = [], [], {}
        lora_rows: dict[str | None, list[int]] = {}
        drafts, draft_rows, spec_rows = batch.drafts, {}, []
        bs = self.block_size
        for i, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start, first = len(input_ids), seq.num_computed_tokens
            end = first + num_new
            input_ids.extend(seq.token_ids[first:end])
            if drafts is not None and drafts[i]:  # its last token, then the guesses
                input_ids.extend(drafts[i])
                draft_rows[i] = (len(spec_rows), num_new)
                spec_rows.extend(range(start, start + num_new))
            lora_rows.setdefault(seq.lora_name, []).extend(range(start, start + num_new))
            positions.extend(range(first, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(first, end))
            if num_new == 1:
                decodes.append((start, table, end))
            elif i in draft_rows:  # each verify row attends as a decode at its own length
                decodes.extend((start + j, table, first + j + 1) for j in range(num_new))
            else:
                prefills.append(PrefillSpan(start, num_new, end, self._tensor(table)))
            if samples[i]:
                sample_rows.append(start + num_new - 1)
                sample_seqs.append(i)
            if seq.wants_prompt_logprobs and first < seq.num_prompt_logit_rows:
                last = min(end, seq.num_prompt_logit_rows)
                prompt_rows[i] = (first, list(range(start, start + last - first)))
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots),
            prefills=prefills,
            decodes=decode_groups(decodes, self.block_size, self.max_group_pages, self.device),
        )
        lora = self._lora_batch(lora_rows, adapters, len(input_ids))
        hidden = self.model(self._tensor(input_ids), self._tensor(positions), meta, lora)
        logits = self.model.compute_logits(
            hidden[self._tensor(sample_rows + spec_rows if spec_rows else sample_rows)]
        )
        prompt_logits = {
            i: (first, self.model.compute_logits(hidden[self._tensor(rows)]))
            for i, (first, rows) in prompt_rows.items()
        }
        if not draft_rows:
            return RunnerOutput(logits, sample_seqs, prompt_logits)
        # The rows of speculating sequences follow the others (one logits call for all).
        num = len(sample_rows)
        spec = {i: logits[num + at : num + at + n] for i, (at, n) in draft_rows.items()}
        return RunnerOutput(logits[:num], sample_seqs, prompt_logits, spec)

    def _lora_batch(
        self,
        lora_rows: dict[str | None, list[int]],
        adapters: dict[str, LoRAAdapter],
        num_rows: int,
    ) -> LoRABatch:
        lora: LoRABatch = []
        for name, rows in lora_rows.items():
            if name is not None:  # every row of a batch using one adapter needs no indexing
                lora.append((adapters[name], None if len(rows) == num_rows else self._tensor(rows)))
        return lora

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


def decode_groups(
    decodes: list[tuple[int, list[int], int]],
    block_size: int,
    max_group_pages: int | None,
    device: torch.device,
) -> list[DecodeGroup]:
    """Cut decodes (row, block table, context length) into attention groups.

    Sorted by context length, a group grows while padding to its longest context wastes at
    most ~25% of the gathered pages: few SDPA calls when lengths are alike, little wasted
    bandwidth when they are not. A group also stays under `max_group_pages` (one sequence
    may exceed it alone)."""
    chunks: list[list[tuple[int, list[int], int]]] = []
    pages = 0
    for decode in sorted(decodes, key=lambda d: d[2]):
        width = len(decode[1])
        gathered = (len(chunks[-1]) + 1) * width if chunks else 0
        if (
            chunks
            and gathered <= MAX_PADDING * (pages + width)
            and (max_group_pages is None or gathered <= max_group_pages)
        ):
            chunks[-1].append(decode)
            pages += width
        else:
            chunks.append([decode])
            pages = width
    groups = []
    for chunk in chunks:
        width = max(len(table) for _, table, _ in chunk)
        lens = torch.tensor([n for _, _, n in chunk], device=device)
        mask = torch.arange(width * block_size, device=device) < lens[:, None]
        groups.append(
            DecodeGroup(
                rows=torch.tensor([row for row, _, _ in chunk], device=device),
                block_tables=torch.tensor(
                    [t + [0] * (width - len(t)) for _, t, _ in chunk], device=device
                ),
                mask=mask[:, None, None, :],
                context_lens=lens,
            )
        )
    return groups
