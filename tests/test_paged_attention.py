"""The CPU paged-attention kernel against the gather + SDPA reference, and its fallback.

Nothing is mocked except, in the fallback test, the compiler (a path that does not exist),
to show what a machine without g++ gets."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from rlserve import SamplingParams
from rlserve.engine.model_runner import decode_groups
from rlserve.models import native_build, paged_kernel
from rlserve.models.attention import (
    KERNEL_MAX_PREFILL,
    AttentionMetadata,
    PrefillSpan,
    paged_attention,
)

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(paged_kernel.kernel() is None, reason="no C++ compiler")


def _cache(num_blocks, block_size, kv_heads, head_dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return (torch.randn(shape, generator=gen).to(dtype) for _ in range(2))


def _both(monkeypatch, fn):
    """fn() with the reference path forced, then with the kernel."""
    monkeypatch.setenv("RLSERVE_PAGED_KERNEL", "0")
    reference = fn()
    monkeypatch.setenv("RLSERVE_PAGED_KERNEL", "1")
    return reference, fn()


def _decode_case(lens, block_size, heads, kv_heads, head_dim, dtype, cap=None):
    rng = random.Random(1)
    widths = [-(-n // block_size) for n in lens]
    num_blocks = sum(widths) + 3
    blocks = rng.sample(range(num_blocks), sum(widths))  # random, non-contiguous pages
    decodes, used = [], 0
    for row, (n, w) in enumerate(zip(lens, widths, strict=True)):
        decodes.append((row, blocks[used : used + w], n))
        used += w
    k_cache, v_cache = _cache(num_blocks, block_size, kv_heads, head_dim, dtype)
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(len(lens), heads, head_dim, generator=gen).to(dtype)
    k, v = (torch.randn(len(lens), kv_heads, head_dim, generator=gen).to(dtype) for _ in "kv")
    slots = torch.tensor(
        [t[(n - 1) // block_size] * block_size + (n - 1) % block_size for _, t, n in decodes]
    )

    def run():
        meta = AttentionMetadata(slots, [], decode_groups(decodes, block_size, cap, CPU))
        return paged_attention(q, k, v, k_cache.clone(), v_cache.clone(), meta, head_dim**-0.5)

    return run


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"), [(8, 2, 64), (4, 4, 32), (6, 3, 24), (16, 8, 128)]
)
def test_decode_matches_reference_fp32(monkeypatch, heads, kv_heads, head_dim):
    # ragged lengths on both sides of block boundaries; head_dim 24 takes the portable loop
    lens = [1, 7, 8, 9, 15, 16, 17, 40, 3, 64]
    run = _decode_case(lens, 8, heads, kv_heads, head_dim, torch.float32, cap=6)
    reference, kernel = _both(monkeypatch, run)
    assert (kernel - reference).abs().max() < 1e-5


def test_decode_matches_reference_bf16(monkeypatch):
    run = _decode_case([1, 5, 16, 17, 33, 100], 16, 8, 2, 64, torch.bfloat16)
    reference, kernel = _both(monkeypatch, run)
    assert kernel.dtype == torch.bfloat16
    # both round to bf16 (8 bits of mantissa) from fp32 sums computed in another order
    assert (kernel.float() - reference.float()).abs().max() < 2e-2


@pytest.mark.parametrize("q_len", [2, 5, KERNEL_MAX_PREFILL, KERNEL_MAX_PREFILL + 4])
def test_prefill_over_cached_prefix_matches_reference(monkeypatch, q_len):
    block_size, heads, kv_heads, head_dim, ctx = 4, 8, 2, 32, 37
    k_cache, v_cache = _cache(20, block_size, kv_heads, head_dim, torch.float32)
    table = torch.tensor(random.Random(3).sample(range(20), -(-ctx // block_size)))
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(q_len + 1, heads, head_dim, generator=gen)  # row 0: another sequence
    k, v = (torch.randn(q_len + 1, kv_heads, head_dim, generator=gen) for _ in "kv")
    positions = torch.arange(ctx - q_len, ctx)
    slots = torch.cat(
        [torch.tensor([0]), table[positions // block_size] * block_size + positions % block_size]
    )

    spans = []

    def run():
        spans.append(PrefillSpan(start=1, q_len=q_len, ctx_len=ctx, block_table=table))
        meta = AttentionMetadata(slots, [spans[-1]], [])
        return paged_attention(q, k, v, k_cache.clone(), v_cache.clone(), meta, 0.2)[1:]

    reference, kernel = _both(monkeypatch, run)
    assert (kernel - reference).abs().max() < 1e-5
    ran_kernel = spans[-1].kernel_plan is not None
    assert ran_kernel == (q_len <= KERNEL_MAX_PREFILL) and spans[0].kernel_plan is None


@pytest.fixture
def one_thread():
    """Keeps the engine test fast on a loaded machine (OpenMP regions stall there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_engine_generate_token_identical(monkeypatch, bundled):
    prompts = [[5, 6, 7, 8, 9] * k for k in (1, 4)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True, seed=7, n=2),
    ]
    calls = []  # a spy: the real kernel runs, the test sees which paths it served
    real_run = paged_kernel.run
    monkeypatch.setattr(
        paged_kernel, "run", lambda q, p, *a: calls.append(len(p.rows)) or real_run(q, p, *a)
    )

    def generate():
        outs = [bundled.generate(prompts, p) for p in params]
        return [c for group in outs for out in group for c in out.outputs]

    # the second run also reuses the first one's cached prefixes: the kernel's prefill path
    reference, kernel = _both(monkeypatch, generate)
    assert calls, "the kernel never ran"
    assert [c.token_ids for c in kernel] == [c.token_ids for c in reference]
    for a, b in zip(kernel, reference, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4


def test_switch_forces_reference(monkeypatch):
    q, (k_cache, _) = torch.zeros(1, 2, 16), _cache(2, 4, 1, 16, torch.float32)
    monkeypatch.setenv("RLSERVE_PAGED_KERNEL", "0")
    assert not paged_kernel.supports(q, k_cache)
    monkeypatch.setenv("RLSERVE_PAGED_KERNEL", "1")
    assert paged_kernel.supports(q, k_cache)
    assert not paged_kernel.supports(q.half(), k_cache.half())  # fp16: reference path


@pytest.mark.parametrize(
    ("rows", "tables", "lens", "message"),
    [
        ([0, 3], [[0], [1]], [1, 1], "rows out of range"),
        ([0, 1], [[0], [9]], [1, 1], "block index out of range"),
        ([0, 1], [[0], [1]], [1, 5], "lens exceed"),
        ([0, 1], [[0]], [1, 1], "one entry per query"),
    ],
)
def test_bad_indices_are_refused(rows, tables, lens, message):
    k_cache, v_cache = _cache(2, 4, 1, 16, torch.float32)
    q, out = torch.zeros(2, 2, 16), torch.full((2, 2, 16), 7.0)
    with pytest.raises(ValueError, match=message):
        paged_kernel.plan(torch.tensor(rows), torch.tensor(tables), torch.tensor(lens), 2, k_cache)
    int32_rows = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="int64"):
        paged_kernel.plan(int32_rows, torch.tensor([[0], [1]]), torch.tensor([1, 1]), 2, k_cache)
    good = paged_kernel.plan(
        torch.tensor([0, 1]), torch.tensor([[0], [1]]), torch.ones(2, dtype=torch.long), 2, k_cache
    )
    with pytest.raises(ValueError, match="do not match"):  # checked for another cache
        paged_kernel.run(q, good, k_cache[:1], v_cache[:1], 1.0, out)
    with pytest.raises(ValueError, match="do not match"):  # checked for another batch
        paged_kernel.run(q[:1], good, k_cache, v_cache, 1.0, out)
    empty = torch.zeros(0, dtype=torch.long)
    none = paged_kernel.plan(empty, torch.zeros(0, 1, dtype=torch.long), empty, 2, k_cache)
    paged_kernel.run(q, none, k_cache, v_cache, 1.0, out)  # no rows: a no-op
    assert (out == 7.0).all()  # nothing written


def test_without_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(paged_kernel, "_state", {})
    monkeypatch.setenv("RLSERVE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.warns(RuntimeWarning, match="gather \\+ SDPA"):
        assert paged_kernel.kernel() is None
    run = _decode_case([3, 9], 4, 4, 2, 16, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference path, and no second warning
        out = run()
    monkeypatch.setattr(paged_kernel, "_state", {})
    monkeypatch.delenv("CXX")
    assert (run() - out).abs().max() < 1e-5  # built into tmp_path this time
    built = native_build.library_path(paged_kernel.SOURCE, paged_kernel.FLAGS)
    assert built.parent == tmp_path and built.exists()
