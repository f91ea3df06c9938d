"""Sandboxed execution of untrusted Python snippets (code-execution tools for RL rollouts).

``Sandbox(SandboxConfig(...)).run(code, timeout=5.0)`` runs ``code`` in a child process with
rlimits, a private work directory, a minimal environment and, where the machine allows,
a dedicated unprivileged uid (leased through lock files, so any number of processes can
share a machine) and user/network/pid namespaces. The HTTP service lives in
:mod:`rlserve.sandbox.service` (imported separately so this package does not need FastAPI).
"""

from rlserve.sandbox.config import ISOLATION_LEVELS, STATUSES, SandboxConfig, SandboxResult
from rlserve.sandbox.isolation import IsolationUnavailable
from rlserve.sandbox.sandbox import Sandbox
from rlserve.sandbox.uids import UidsUnavailable

__all__ = [
    "ISOLATION_LEVELS",
    "STATUSES",
    "IsolationUnavailable",
    "Sandbox",
    "SandboxConfig",
    "SandboxResult",
    "UidsUnavailable",
]
