"""Paged KV cache bookkeeping: blocks, reference counts, block tables, prefix cache.

A block holds `block_size` tokens of KV. Free blocks sit in an LRU queue; a free block that
still holds a full, hashed block of some earlier sequence stays findable through
`cached_blocks` until it is handed out again (least recently used first), so a later
sequence with the same prefix reuses it instead of recomputing.
A block's hash chains its parent's hash, its token ids and a cache key (weight version and
adapter), so KV computed under other weights is never matched. It is SHA-256, not Python's
`hash`: a hit is trusted without comparing tokens, so a prompt crafted to collide with
another user's prefix must not be able to read that user's KV (vLLM advisory
GHSA-rm76-4mrf-v9r8 was exactly this).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Hashable

from rlserve.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached_blocks: dict[bytes, int] = {}  # hash -> block id
        self.pending_copies: list[tuple[int, int]] = []  # copy-on-write (src, dst) to run
        self.num_hit_tokens = 0  # prompt tokens served from the prefix cache, ever

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @staticmethod
    def hash_block(parent: bytes | None, token_ids: list[int], cache_key: Hashable) -> bytes:
        """SHA-256 of (parent hash, token count, token ids, cache key). The parent hash and
        the count have fixed lengths and the count fixes how long the tokens are, so the key
        is whatever follows: no two different inputs share an encoding."""
        return _hash_block(parent, token_ids, _key_bytes(cache_key))

    def match_prefix(self, seq: Sequence, cache_key: Hashable) -> tuple[list[int], list[bytes]]:
        """Cached blocks holding a prefix of `seq` (never its last token, which must be
        computed to get logits). Returns (block ids, their hashes)."""
        if not self.enable_prefix_caching or seq.wants_prompt_logprobs:
            return [], []
        num_blocks = (seq.num_tokens - 1) // self.block_size
        blocks, hashes = [], []
        for h in self._hash_chain(seq, cache_key, num_blocks)[:num_blocks]:
            block = self.cached_blocks.get(h)
            if block is None:
                break
            blocks.append(block)
            hashes.append(h)
        return blocks, hashes

    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, cached: tuple[list[int], list[bytes]] = ([], [])
    ) -> bool:
        """Give `seq` room for `num_new_tokens` more tokens (after `cached` prefix blocks).
        Returns False, changing nothing, when there are not enough free blocks."""
        hit_blocks, hit_hashes = cached
        num_computed = seq.num_computed_tokens + len(hit_blocks) * self.block_size
        total_blocks = self.blocks_needed(num_computed + num_new_tokens)
        num_new_blocks = total_blocks - len(seq.block_table) - len(hit_blocks)
        write_block = num_computed // self.block_size
        needs_copy = (
            write_block < len(seq.block_table) and self.ref_counts[seq.block_table[write_block]] > 1
        )
        reused_free = sum(1 for b in hit_blocks if b in self.free_blocks)
        if num_new_blocks + needs_copy > self.num_free_blocks - reused_free:
            return False
        for block in hit_blocks:
            self._take(block)
        seq.block_table.extend(hit_blocks)
        seq.block_hashes.extend(hit_hashes)
        if hit_blocks:
            seq.num_computed_tokens = num_computed
            self.num_hit_tokens += len(hit_blocks) * self.block_size
            seq.num_cached_tokens = max(
                seq.num_cached_tokens, min(num_computed, seq.num_prompt_tokens)
            )
        if needs_copy:  # the block we are about to write into is shared: copy it first
            src = seq.block_table[write_block]
            dst = self._pop_free()
            self.ref_counts[src] -= 1
            seq.block_table[write_block] = dst
            self.pending_copies.append((src, dst))
        seq.block_table.extend(self._pop_free() for _ in range(num_new_blocks))
        return True

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """`child` now shares all of `parent`'s blocks (copy-on-write for the last one)."""
        for block in parent.block_table:
            self.ref_counts[block] += 1

    def free(self, seq: Sequence) -> None:
        # Tail blocks go to the free queue first so they are evicted before the shared
        # prefix blocks that other sequences are more likely to ask for.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
        seq.block_table = []
        seq.block_hashes = []

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Free the blocks of `seq` past the first `num_tokens` tokens (speculation's
        rejected guesses); they were allocated this step, so none is shared or hashed."""
        keep = self.blocks_needed(num_tokens)
        for block in seq.block_table[keep:]:
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:  # holds nothing: handed out first
                self.free_blocks[block] = None
                self.free_blocks.move_to_end(block, last=False)
        del seq.block_table[keep:]

    def cache_full_blocks(self, seq: Sequence, cache_key: Hashable) -> None:
        """Register the blocks of `seq` that became full so later sequences can reuse them."""
        num_full = seq.num_computed_tokens // self.block_size
        if not self.enable_prefix_caching or num_full <= len(seq.block_hashes):
            return
        chain = self._hash_chain(seq, cache_key, num_full)
        for i in range(len(seq.block_hashes), num_full):
            h = chain[i]
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self.cached_blocks and self.block_hash[block] is None:
                self.cached_blocks[h] = block
                self.block_hash[block] = h

    def _hash_chain(self, seq: Sequence, cache_key: Hashable, num_blocks: int) -> list[bytes]:
        """The hashes of (at least) the first `num_blocks` blocks of `seq`. They are kept on
        the sequence while its cache key stays the same (its tokens only ever grow), so a
        long prompt waiting for room is hashed once, not at every step."""
        key, chain = seq.hash_chain
        if key != cache_key:
            chain = []
            seq.hash_chain = (cache_key, chain)
        if len(chain) < num_blocks:
            key_bytes = _key_bytes(cache_key)
            for i in range(len(chain), num_blocks):
                tokens = seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
                chain.append(_hash_block(chain[-1] if chain else None, tokens, key_bytes))
        return chain

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (in-use blocks keep their KV; it is just not shared)."""
        self.cached_blocks.clear()
        self.block_hash = [None] * self.num_blocks

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free_blocks[block]
        self.ref_counts[block] += 1

    def _pop_free(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)  # least recently used
        h = self.block_hash[block]
        if h is not None:  # evict its cache entry: the block gets new contents
            del self.cached_blocks[h]
            self.block_hash[block] = None
        self.ref_counts[block] = 1
        return block


_ROOT = bytes(32)  # the parent of a sequence's first block


def _key_bytes(cache_key: Hashable) -> bytes:
    # Cache keys are tuples of ints, strings and None: their repr is deterministic.
    return repr(cache_key).encode()


def _hash_block(parent: bytes | None, token_ids: list[int], key: bytes) -> bytes:
    tokens = array("q", token_ids).tobytes()
    count = len(token_ids).to_bytes(8, "little")
    return hashlib.sha256((parent or _ROOT) + count + tokens + key).digest()
