"""Resource limits and privilege drop applied in the child between fork and exec."""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from rlserve.sandbox.process import processes_of_uid


def cpu_soft_limit(cpu_s: float) -> int:
    """RLIMIT_CPU's soft limit in whole seconds (SIGXCPU; the hard limit's SIGKILL follows
    one second later)."""
    return max(1, math.ceil(cpu_s))


@dataclass(frozen=True)
class ChildLimits:
    """What the pre-exec hook applies to one sandbox child."""

    cpu_s: float
    memory_bytes: int
    file_bytes: int
    open_files: int
    processes: int
    uid: int | None = None  # drop to this uid/gid (requires root); None keeps the current one

    def rlimits(self, nproc: int | None = None) -> list[tuple[int, int, int]]:
        """(resource, soft, hard) triples. Hard limits are set too so that the snippet cannot
        raise them again; the CPU hard limit is one second later so SIGXCPU comes first."""
        cpu = cpu_soft_limit(self.cpu_s)
        nproc = self.processes if nproc is None else nproc
        return [
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_AS, self.memory_bytes, self.memory_bytes),
            (resource.RLIMIT_FSIZE, self.file_bytes, self.file_bytes),
            (resource.RLIMIT_NOFILE, self.open_files, self.open_files),
            (resource.RLIMIT_NPROC, nproc, nproc),
        ]


def effective_process_limit(limits: ChildLimits) -> int:
    """RLIMIT_NPROC counts every process of the real uid, so without a dedicated uid the
    limit must leave room for what the current user already runs."""
    if limits.uid is not None:
        return limits.processes
    return sum(processes_of_uid(os.getuid()).values()) + limits.processes


def make_preexec(limits: ChildLimits) -> Callable[[], None]:
    """Build the function run in the child after fork, before exec.

    Everything it needs is computed here, in the parent, so that the child only makes
    system calls (no imports, no locks another thread could hold across the fork).
    """
    triples = limits.rlimits(effective_process_limit(limits))
    uid = limits.uid
    setrlimit = resource.setrlimit

    def preexec() -> None:
        for res, soft, hard in triples:
            setrlimit(res, (soft, hard))
        if uid is not None:
            # Order matters: supplementary groups and gid can only be changed while root.
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return preexec
