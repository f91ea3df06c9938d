"""Map how a child ended to a :class:`SandboxResult` status."""

from __future__ import annotations

import re
import signal
from dataclasses import replace

from rlserve.sandbox.config import SandboxResult

_MEMORY_LINE = re.compile(r"^(?:\w+\.)*MemoryError\b|Cannot allocate memory|std::bad_alloc")


def looks_like_memory_error(stderr: str) -> bool:
    """True when the last lines of stderr report an allocation failure."""
    tail = [line for line in stderr.strip().splitlines()[-3:] if line.strip()]
    return any(_MEMORY_LINE.search(line) for line in tail)


OUTSIDE_KILL_NOTE = (
    "\n[sandbox: the run was killed by SIGKILL from outside the sandbox (another process or "
    "the kernel), not by its limits; this is an infrastructure error]\n"
)
SELF_KILL_NOTE = (
    "\n[sandbox: the run was killed by SIGKILL, not by the sandbox's limits, and a rerun died "
    "the same way: the code killed itself, so this is its own error]\n"
)
SESSION_KILL_NOTE = (
    "\n[sandbox: the interpreter was killed by SIGKILL, not by the sandbox's limits; a "
    "session cannot be rerun to tell another process or the kernel from the code killing "
    "itself, so this counts as the code's error]\n"
)


def sigkill_cause(
    reason: str, exit_code: int | None, cpu_used_s: float | None, cpu_limit_s: float
) -> str | None:
    """Who sent a SIGKILL that ended the run: ``"cpu"`` (RLIMIT_CPU's hard limit, which
    follows an ignored SIGXCPU; the CPU time used shows it), ``"outside"`` (none of the
    sandbox's limits: another process, the kernel, or the snippet itself), or None when the
    run did not die of a SIGKILL the sandbox did not send itself (its wall-clock deadline,
    output cap and the kill of a child that closed its pipes but kept running, ``"killed"``,
    are its own, and ``reason`` says so)."""
    if reason in ("deadline", "overflow", "killed") or exit_code != -signal.SIGKILL:
        return None
    if cpu_used_s is not None and cpu_used_s >= cpu_limit_s:
        return "cpu"
    return "outside"


def classify_ending(
    reason: str,
    exit_code: int | None,
    stderr: str,
    cpu_used_s: float | None,
    cpu_limit_s: float,
    *,
    rerunnable: bool,
) -> tuple[str, str]:
    """The status of a child that ended this way, and its stderr with a note when a SIGKILL
    none of the sandbox's limits sent ended it. That is a ``sandbox_error`` when the run
    can be rerun to tell an outside kill from the code killing itself (the caller reruns
    it: see :func:`killed_from_outside`), else (a session) the code's ``error``."""
    sigkill = sigkill_cause(reason, exit_code, cpu_used_s, cpu_limit_s)
    if sigkill == "outside":
        if rerunnable:
            return "sandbox_error", stderr + OUTSIDE_KILL_NOTE
        return "error", stderr + SESSION_KILL_NOTE
    if sigkill == "cpu":
        return "timeout", stderr
    return classify(reason, exit_code, stderr), stderr


def killed_from_outside(result: SandboxResult) -> bool:
    """The run died of a SIGKILL none of the sandbox's limits sent (see
    :func:`classify_ending`)."""
    return result.status == "sandbox_error" and result.exit_code == -signal.SIGKILL


def blame_the_code(result: SandboxResult) -> SandboxResult:
    """An outside-kill result turned into the code's own error: its rerun died the same way."""
    stderr = result.stderr.removesuffix(OUTSIDE_KILL_NOTE) + SELF_KILL_NOTE
    return replace(result, status="error", stderr=stderr)


def classify(reason: str, exit_code: int | None, stderr: str) -> str:
    """``reason`` is what ended the read loop (see :func:`rlserve.sandbox.process.pump`;
    ``"killed"``: the sandbox killed a child that closed its pipes but kept running)."""
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
