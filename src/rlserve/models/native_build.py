"""Compile a kernel's plain C++ source with the system `g++`, once, into a cache.

The kernels (`int8_kernel.cpp`, `paged_attention.cpp`) use no torch headers, so a build
takes about a second and has no ABI tie to torch; they are called through ctypes on
tensors' data pointers. A build lives in `$RLSERVE_KERNEL_CACHE` (default
`$XDG_CACHE_HOME/rlserve/kernels`, i.e. `~/.cache/rlserve/kernels`) under a name keyed by
the source, the flags and this CPU's flags (`-march=native` builds never move to another
CPU). It is made under a file lock and moved into place atomically, so concurrent first
uses build it once and never load half a library.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("RLSERVE_KERNEL_CACHE"):
        return Path(os.environ["RLSERVE_KERNEL_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "rlserve" / "kernels"


def _cpu_flags() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line for line in lines if line.startswith("flags")), platform.processor())


def library_path(source: Path, flags: list[str]) -> Path:
    """Where the build of `source` with `flags` on this CPU lives."""
    key = source.read_bytes() + " ".join(flags).encode() + _cpu_flags().encode()
    return cache_dir() / f"{source.stem}-{hashlib.sha256(key).hexdigest()[:16]}.so"


def build(source: Path, flags: list[str]) -> Path:
    """Compile `source` unless this exact build exists; the library's path. RuntimeError
    without a compiler, CalledProcessError (with the compiler's stderr) when it fails."""
    target = library_path(source, flags)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
        if compiler is None:
            raise RuntimeError("no C++ compiler (g++) on PATH")
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run(
                [compiler, *flags, str(source), "-o", str(out)],
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
            os.replace(out, target)  # atomic: a concurrent loader sees all of it or nothing
    return target
