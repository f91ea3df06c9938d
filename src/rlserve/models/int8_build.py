"""Build (once, cached) and load the AVX-512 int8 weight-only kernel of `int8_kernel.cpp`.

It is plain C++ without torch headers, so it compiles in about a second with the system
`g++` and has no ABI tie to torch; it is called through ctypes on tensors' data pointers.
The library is cached under `$RLSERVE_CACHE` (default `~/.cache/rlserve`) by a hash of the
source and flags, and written atomically so concurrent first uses are safe. Anything that
fails (no AVX-512, no compiler, a failed build or load) returns None once, with the reason in
`KERNEL_ERROR`, and rlserve falls back to torch ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_kernel.cpp")
FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"]
KERNEL_ERROR: list[str] = []  # why the kernel is unavailable, once known


def cache_dir() -> Path:
    return Path(os.environ.get("RLSERVE_CACHE", Path.home() / ".cache" / "rlserve"))


def _library_path() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return cache_dir() / f"int8_kernel-{digest}.so"


def _compile(target: Path) -> None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(out)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.replace(out, target)  # atomic: a concurrent loader sees all of it or nothing


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
        path = _library_path()
        if not path.exists():
            _compile(path)
        return _bind(ctypes.CDLL(str(path)))
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"{type(exc).__name__}: {exc} {detail.decode(errors='replace')[:500]}"
        KERNEL_ERROR.append(reason)
        log.warning("int8 kernel unavailable, using torch ops: %s", reason)
        return None
