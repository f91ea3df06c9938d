"""Build (once, cached) and load the AVX-512 int8 weight-only kernel of `int8_kernel.cpp`.

`native_build` compiles it once (plain C++, about a second) into the kernel cache. Anything
that fails (no AVX-512, no compiler, a failed build or load) returns None once, with the
reason in `KERNEL_ERROR`, and rlserve falls back to torch ops.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
from pathlib import Path

import torch

from rlserve.models.native_build import build

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_kernel.cpp")
FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"]
KERNEL_ERROR: list[str] = []  # why the kernel is unavailable, once known


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for name in ("rlserve_int8_linear", "rlserve_int8_linear_vnni"):
        getattr(lib, name).argtypes = [p, p, p, p, p, i64, i64, i64, i32]
        getattr(lib, name).restype = None
    lib.rlserve_int8_quantize.argtypes = [p, p, p, i64, i64, i32]
    lib.rlserve_int8_quantize.restype = None
    lib.rlserve_has_vnni.restype = ctypes.c_int
    # The matmul entry point for this CPU: VNNI (int16 activations) where it has it.
    lib.linear = lib.rlserve_int8_linear_vnni if lib.rlserve_has_vnni() else lib.rlserve_int8_linear
    lib.rlserve_int8_dequant.argtypes = [p, p, p, i64, i64, i32]
    lib.rlserve_int8_dequant.restype = None
    return lib


@functools.cache
def int8_kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (reason in `KERNEL_ERROR`) to use torch ops."""
    if os.environ.get("RLSERVE_INT8_KERNEL", "1") == "0":
        KERNEL_ERROR.append("disabled by RLSERVE_INT8_KERNEL=0")
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16"):
        KERNEL_ERROR.append(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
        return None
    try:
        return _bind(ctypes.CDLL(str(build(SOURCE, FLAGS))))
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc} {(getattr(exc, 'stderr', '') or '')[:500]}"
        KERNEL_ERROR.append(reason)
        log.warning("int8 kernel unavailable, using torch ops: %s", reason)
        return None
