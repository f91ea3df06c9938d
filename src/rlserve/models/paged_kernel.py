"""The CPU paged-attention kernel (`paged_attention.cpp`): built once, loaded, called.

`native_build` compiles it with the system `g++` at first use, or ahead of time by
`kernel()` (what `make install` runs), into the kernel cache. It is a plain C entry point
called through ctypes on tensors' data pointers. Where it cannot be built or loaded,
`kernel()` returns None after one warning and attention falls back to gather + SDPA.
`RLSERVE_PAGED_KERNEL=0` forces that reference path (tests, debugging).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rlserve.models.native_build import build

SOURCE = Path(__file__).with_name("paged_attention.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
PARALLEL_MIN_BYTES = 256 * 1024  # K + V bytes a call reads before it uses every thread

_state: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    """False when `RLSERVE_PAGED_KERNEL=0` asks for the gather + SDPA reference path."""
    return os.environ.get("RLSERVE_PAGED_KERNEL", "1") != "0"


def _load() -> ctypes.CDLL:
    # torch is imported, so its libgomp.so.1 is loaded already; linking against the same
    # soname makes this library share torch's OpenMP thread pool instead of adding one.
    lib = ctypes.CDLL(str(build(SOURCE, FLAGS)))
    fn = lib.rlserve_paged_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
    fn.argtypes += [_I64] * 8 + [ctypes.c_float, _PTR, ctypes.c_int]
    return lib


def kernel() -> ctypes.CDLL | None:
    """The loaded library, or None (after one warning) where it cannot be built."""
    if "lib" not in _state:
        try:
            _state["lib"] = _load()
        except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", "") or err
            warnings.warn(
                f"rlserve: paged attention kernel unavailable ({detail}); using gather + SDPA",
                RuntimeWarning,
                stacklevel=2,
            )
            _state["lib"] = None
    return _state["lib"]


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel can run these tensors (CPU, fp32/bf16, contiguous cache and heads)."""
    return (
        q.device.type == "cpu"
        and q.dtype in DTYPES
        and k_cache.dtype == q.dtype
        and k_cache.dim() == 4
        and k_cache.is_contiguous()
        and q.stride(-1) == 1
        and q.stride(-2) == q.shape[-1]
        and enabled()
        and kernel() is not None
    )


@dataclass(frozen=True)
class Plan:
    """Checked indices of one kernel call, built once per step and reused by every layer:
    out[rows[i]] = attention of q[rows[i]] over the first lens[i] tokens of tables[i]."""

    rows: torch.Tensor  # [N] int64
    tables: torch.Tensor  # [N, max_blocks] int64, unit stride in the last dim
    lens: torch.Tensor  # [N] int64
    threads: int
    fits: tuple[int, int, int, int]  # (q rows, cache blocks, block size, bytes per token)


def plan(
    rows: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    num_q_rows: int,
    k_cache: torch.Tensor,
) -> Plan:
    """Check the indices against a batch of `num_q_rows` and this cache; ValueError if bad."""
    num_blocks, block_size = k_cache.shape[0], k_cache.shape[1]
    _check_indices(rows, tables, lens, num_q_rows, num_blocks, block_size)
    token_bytes = k_cache.shape[2] * k_cache.shape[3] * k_cache.element_size()
    threads = _threads(lens, token_bytes)
    return Plan(rows, tables, lens, threads, (num_q_rows, num_blocks, block_size, token_bytes))


def fits(p: Plan, q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether `p` was checked for this batch size and cache shape."""
    token_bytes = k_cache.shape[2] * k_cache.shape[3] * k_cache.element_size()
    return p.fits == (q.shape[0], k_cache.shape[0], k_cache.shape[1], token_bytes)


def run(
    q: torch.Tensor,
    p: Plan,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> None:
    """Attention of the plan's rows of q ([T, heads, head_dim]) over their pages of the
    caches ([blocks, block_size, kv_heads, head_dim]) into the same rows of out. Callers
    check `supports` first."""
    lib = kernel()
    if lib is None or not fits(p, q, k_cache) or v_cache.shape != k_cache.shape:
        raise ValueError("paged attention: plan, q and caches do not match")
    _, block_size, kv_heads, head_dim = k_cache.shape
    status = lib.rlserve_paged_attention(
        DTYPES[q.dtype],
        q.data_ptr(),
        p.rows.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        p.tables.data_ptr(),
        p.lens.data_ptr(),
        p.rows.shape[0],
        q.shape[1],
        kv_heads,
        head_dim,
        block_size,
        p.tables.stride(0),
        q.stride(0),
        out.stride(0),
        scale,
        out.data_ptr(),
        p.threads,
    )
    if status != 0:
        raise RuntimeError(f"paged attention kernel failed with status {status}")


def _threads(lens: torch.Tensor, bytes_per_token: int) -> int:
    """One thread for small reads: waking the pool costs more than it saves there, and
    far more on a loaded machine, where a descheduled thread stalls the whole region."""
    if lens.numel() == 0 or 2 * int(lens.sum()) * bytes_per_token < PARALLEL_MIN_BYTES:
        return 1
    return torch.get_num_threads()


def _check_indices(
    rows: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    num_rows: int,
    num_blocks: int,
    block_size: int,
) -> None:
    """The kernel trusts its indices: a bad one would read or write out of bounds."""
    for name, t in (("rows", rows), ("tables", tables), ("lens", lens)):
        if t.dtype != torch.int64 or t.device.type != "cpu" or t.stride(-1) != 1:
            raise ValueError(f"paged attention: {name} must be int64 on CPU, unit stride")
    if tables.dim() != 2 or tables.shape[0] != rows.shape[0] or lens.shape != rows.shape:
        raise ValueError("paged attention: rows, lens and tables must have one entry per query")
    if rows.numel() == 0:
        return
    if int(rows.min()) < 0 or int(rows.max()) >= num_rows:
        raise ValueError("paged attention: rows out of range")
    if int(lens.max()) > tables.shape[1] * block_size:
        raise ValueError("paged attention: lens exceed the block tables")
    if int(tables.min()) < 0 or int(tables.max()) >= num_blocks:
        raise ValueError("paged attention: block index out of range")
