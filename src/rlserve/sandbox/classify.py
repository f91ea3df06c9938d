"""Map how a child ended to a :class:`SandboxResult` status."""

from __future__ import annotations

import re
import signal

_MEMORY_LINE = re.compile(r"^(?:\w+\.)*MemoryError\b|Cannot allocate memory|std::bad_alloc")


def looks_like_memory_error(stderr: str) -> bool:
    """True when the last lines of stderr report an allocation failure."""
    tail = [line for line in stderr.strip().splitlines()[-3:] if line.strip()]
    return any(_MEMORY_LINE.search(line) for line in tail)


def classify(reason: str, exit_code: int | None, stderr: str) -> str:
    """``reason`` is what ended the read loop (see :func:`rlserve.sandbox.process.pump`)."""
    if reason == "overflow":
        return "output_limit"
    if reason == "deadline":
        return "timeout"
    if exit_code == 0:
        return "completed"
    if exit_code == -signal.SIGXCPU:
        return "timeout"
    if looks_like_memory_error(stderr):
        return "memory"
    return "error"
