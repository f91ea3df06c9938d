"""Map how a child ended to a :class:`SandboxResult` status."""

from __future__ import annotations

import re
import signal

_MEMORY_LINE = re.compile(r"^(?:\w+\.)*MemoryError\b|Cannot allocate memory|std::bad_alloc")


def looks_like_memory_error(stderr: str) -> bool:
    """True when the last lines of stderr report an allocation failure."""
    tail = [line for line in stderr.strip().splitlines()[-3:] if line.strip()]
    return any(_MEMORY_LINE.search(line) for line in tail)


OUTSIDE_KILL_NOTE = (
    "\n[sandbox: the run was killed by SIGKILL from outside the sandbox (another process or "
    "the kernel), not by its limits; this is an infrastructure error]\n"
)


def sigkill_cause(
    reason: str, exit_code: int | None, cpu_used_s: float | None, cpu_limit_s: float
) -> str | None:
    """Who sent a SIGKILL that ended the run: ``"cpu"`` (RLIMIT_CPU's hard limit, which
    follows an ignored SIGXCPU; the CPU time used shows it), ``"outside"`` (none of the
    sandbox's limits: another process or the kernel), or None when the run did not die of
    a SIGKILL the sandbox did not send itself (its wall-clock deadline and output cap kill
    too, and ``reason`` says so). A snippet that SIGKILLs itself looks like ``"outside"``."""
    if reason in ("deadline", "overflow") or exit_code != -signal.SIGKILL:
        return None
    if cpu_used_s is not None and cpu_used_s >= cpu_limit_s:
        return "cpu"
    return "outside"


def classify(reason: str, exit_code: int | None, stderr: str, *, sigkill: str | None = None) -> str:
    """``reason`` is what ended the read loop (see :func:`rlserve.sandbox.process.pump`);
    ``sigkill`` is :func:`sigkill_cause`'s answer."""
    if sigkill == "outside":
        return "sandbox_error"
    if sigkill == "cpu":
        return "timeout"
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
